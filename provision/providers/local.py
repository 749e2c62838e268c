"""Lab machines on this host: systemd-nspawn machines in network namespaces.

Per cluster: a lab namespace ``pv-<cluster>`` whose bridge ``br-lab`` holds the
gateway address. Per node: a namespace ``pv-<cluster>-<node>`` with ``eth0`` (a veth
whose peer is on br-lab), an overlay of the shared read-only node image with the
node's own writable layer, a plain directory for /var/lib/containerd, cgroup
sub-groups with the inventory's CPU and memory limits, and a detached nspawn booting
it. Everything a node owns on disk lives in ``<state>/clusters/<c>/machines/<node>/``:

    upper/ work/   the overlay's writable layer (the node's "disk") and workdir
    root/          the overlay mount nspawn boots
    containerd/    bound to /var/lib/containerd (overlayfs cannot hold containerd's)
    kubelet/       bound to /var/lib/kubelet (plain directory, as verified with a kubelet)
    node.json      what was created (names, image), so destroy never has to guess
    nspawn.pid     console.log

"stopped" means only that directory is left: no mount, namespace, cgroup or process.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provision.errors import BadInput, ProviderError
from provision.executors.ssh import SSHEndpoint, ensure_cluster_keypair
from provision.lab import cgroups, image, mounts, netns, nspawn, nsproxy, procs
from provision.paths import ClusterPaths, write_secret
from provision.providers import services
from provision.providers.base import (
    MachineState,
    Problem,
    Progress,
    problem,
    quiet_if_none,
    raise_if_invalid,
    wait_all,
)
from provision.providers.sshprobe import probe

SSH_PORT = 22
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value: str | int | None) -> int | None:
    """"2Gi" -> 2147483648; None stays None."""
    if value is None or isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise BadInput(f"not a size: {value!r} (use e.g. 2Gi or 1536Mi)")
    return int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def lab_netns(cluster: str) -> str:
    return f"pv-{cluster}"


def node_netns(cluster: str, node: str) -> str:
    return f"pv-{cluster}-{node}"


def proxy_command(cluster: str) -> str:
    return f"{sys.executable} -m provision.lab.nsproxy connect {lab_netns(cluster)} %h %p"


@dataclass(frozen=True)
class NodeLayout:
    """Every name and path one lab node uses."""

    cluster: str
    node: str
    dir: Path

    @property
    def machine(self) -> str:  # nspawn machine name, cgroup name and netns name
        return node_netns(self.cluster, self.node)

    @property
    def netns(self) -> str:
        return self.machine

    @property
    def cgroup(self) -> str:
        return self.machine

    @property
    def veth(self) -> str:
        return netns.veth_name(self.cluster, self.node)

    upper = property(lambda self: self.dir / "upper")
    work = property(lambda self: self.dir / "work")
    root = property(lambda self: self.dir / "root")
    containerd = property(lambda self: self.dir / "containerd")
    kubelet = property(lambda self: self.dir / "kubelet")
    pidfile = property(lambda self: self.dir / "nspawn.pid")
    console_log = property(lambda self: self.dir / "console.log")
    meta = property(lambda self: self.dir / "node.json")

    def pid(self) -> int | None:
        return nspawn.read_pid(self.pidfile, self.machine)


def _image_name(inv: Any) -> str:
    local = getattr(getattr(inv, "providers", None), "local", None)
    return getattr(local, "image", None) or "debian-12"


def _subnet(inv: Any) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(str(inv.network.subnet), strict=False)  # type: ignore[return-value]


def _gateway(inv: Any) -> str:
    gw = getattr(inv.network, "gateway", None)
    return str(gw) if gw else str(next(_subnet(inv).hosts()))


def _memory(node: Any) -> int | None:
    machine = getattr(node, "machine", None)
    if machine is None:
        return None
    value = getattr(machine, "memory_bytes", None)
    return value if isinstance(value, int) else parse_size(getattr(machine, "memory", None))


def _cpus(node: Any) -> int | None:
    return getattr(getattr(node, "machine", None), "cpus", None)


class LocalProvider:
    name = "local"
    ssh_timeout = 120.0  # seconds from nspawn start to sshd answering
    stop_timeout = 30.0  # clean poweroff before SIGKILL

    # --- layout ----------------------------------------------------------------

    def paths(self, inv: Any) -> ClusterPaths:
        return ClusterPaths.for_cluster(inv.name)

    def layout(self, inv: Any, node: Any) -> NodeLayout:
        name = node if isinstance(node, str) else node.name
        return NodeLayout(inv.name, name, self.paths(inv).machines_dir / name)

    # --- static checks -----------------------------------------------------------

    def check(self, inv: Any, nodes: Sequence[Any]) -> list[Problem]:
        out: list[Problem] = []
        if os.geteuid() != 0:
            out.append(problem(inv, "providers.local", "lab machines need root "
                               "(network namespaces, mounts, cgroups, systemd-nspawn)",
                               hint="run provision as root"))
        for tool, pkg in (("systemd-nspawn", "systemd-container"), ("ip", "iproute2")):
            if not shutil.which(tool):
                out.append(problem(inv, "providers.local", f"{tool} is not installed",
                                   hint=f"apt-get install {pkg}"))
        img = _image_name(inv)
        try:
            recipe = image.find_recipe(img)
            if not recipe.is_built() and not (shutil.which("debootstrap")
                                              or os.path.exists("/usr/sbin/debootstrap")):
                out.append(problem(inv, "providers.local.image",
                                   f"image {img!r} is not built and debootstrap is missing",
                                   hint="apt-get install debootstrap"))
        except BadInput as e:
            out.append(problem(inv, "providers.local.image", str(e),
                               hint="add a recipe under images/ or use debian-12"))
        try:
            subnet = _subnet(inv)
            gateway = ipaddress.ip_address(_gateway(inv))
        except (ValueError, AttributeError) as e:
            return out + [problem(inv, "network.subnet", f"bad node subnet: {e}")]
        if gateway not in subnet:
            out.append(problem(inv, "network.gateway", f"gateway {gateway} is outside {subnet}"))
        running = nspawn.find_machines(f"pv-{inv.name}-")
        for node in nodes:
            where = f"nodes[{node.name}]"
            try:
                addr = ipaddress.ip_address(str(node.address))
            except ValueError:
                out.append(problem(inv, f"{where}.address", f"not an address: {node.address}"))
                continue
            if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
                out.append(problem(inv, f"{where}.address",
                                   f"{addr} is not a host address of the lab subnet {subnet}",
                                   hint=f"pick a free address in {subnet}"))
            elif addr == gateway:
                out.append(problem(inv, f"{where}.address",
                                   f"{addr} is the lab gateway (the provisioner's side)"))
            lay = self.layout(inv, node)
            ours = lay.meta.exists()
            pid = running.get(lay.machine)
            if pid is not None and pid != lay.pid():
                out.append(problem(inv, f"{where}.name",
                                   f"a systemd-nspawn machine named {lay.machine} is already "
                                   f"running (pid {pid}) and is not this cluster's",
                                   hint="rename the cluster or stop that machine"))
            elif not ours and netns.exists(lay.netns):
                out.append(problem(inv, f"{where}.name",
                                   f"network namespace {lay.netns} exists and is not this "
                                   "cluster's", hint=f"left from a crashed run? "
                                   f"`ip netns delete {lay.netns}`"))
        return out

    # --- lifecycle ---------------------------------------------------------------

    def ensure(self, inv: Any, nodes: Sequence[Any], progress: Progress | None = None) -> None:
        say = quiet_if_none(progress)
        raise_if_invalid(self, inv, nodes)
        if not nodes:
            return
        def image_progress(message: str) -> None:
            for n in nodes:
                say(n.name, message)

        rootfs = image.ensure_image(_image_name(inv), image_progress)
        raise_inotify_limits(lambda msg: image_progress(msg))
        paths = self.paths(inv)
        ensure_cluster_keypair(paths)
        self._ensure_lab(inv)
        started = []
        for node in nodes:
            lay = self.layout(inv, node)
            if lay.pid() is not None:
                say(node.name, "running, reused")
                self._record_host_key(paths, node, lay)
                continue
            say(node.name, "starting" if lay.meta.exists() else "creating")
            self._prepare(inv, node, lay, rootfs)
            nspawn.launch(self._machine_spec(lay, node))
            started.append(node)
        self._wait_ssh(inv, nodes, say)

    def start(self, inv: Any, node: Any) -> None:
        lay = self.layout(inv, node)
        if not lay.meta.exists():
            raise ProviderError(f"lab machine {node.name} does not exist: run `provision up`")
        self.ensure(inv, [node])

    def stop(self, inv: Any, node: Any) -> None:
        _close_ssh_masters(self.paths(inv), [node.name])
        self._stop(self.layout(inv, node), self.stop_timeout)

    def observe(self, inv: Any, nodes: Sequence[Any]) -> dict[str, MachineState]:
        """Nodes may be Node objects or names (e.g. from ``known_machines``)."""
        out = {}
        for node in nodes:
            lay = self.layout(inv, node)
            if lay.pid() is not None:
                out[lay.node] = MachineState.RUNNING
            elif lay.meta.exists():
                out[lay.node] = MachineState.STOPPED
            else:
                out[lay.node] = MachineState.MISSING
        return out

    def known_machines(self, inv: Any) -> dict[str, str]:
        """Every lab machine this cluster has on disk, in the inventory or not any more,
        with the address it was created with (node name -> address). For `up` and
        `plan`: a node removed from the inventory still has a machine to drain, reset
        and release, and the inventory no longer says where it is."""
        machines = self.paths(inv).machines_dir
        if not machines.is_dir():
            return {}
        out = {}
        for meta in sorted(machines.glob("*/node.json")):
            with contextlib.suppress(OSError, ValueError):
                out[meta.parent.name] = str(json.loads(meta.read_text())["address"])
        return out

    def destroy(self, inv: Any, nodes: Sequence[Any]) -> None:
        paths = self.paths(inv)
        names = [n if isinstance(n, str) else n.name for n in nodes]
        _close_ssh_masters(paths, names)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: self._destroy_node(inv, n), names))
        machines = paths.machines_dir
        left = [d for d in machines.iterdir() if d.is_dir()] if machines.is_dir() else []
        if not left:
            self.destroy_lab(inv)

    def ssh_endpoint(self, inv: Any, node: Any) -> SSHEndpoint:
        return SSHEndpoint(address=str(node.address), port=SSH_PORT,
                           proxy_command=proxy_command(inv.name))

    # --- API access from the host ----------------------------------------------------

    def forward_api(self, inv: Any, listen_port: int | None = None) -> int:
        """127.0.0.1:<apiForwardPort> on the host -> the API virtual IP in the lab.
        Idempotent; returns the loopback port. Stopped by destroy."""
        local = getattr(inv.providers, "local", None)
        port = listen_port or getattr(local, "api_forward_port", None) or 16443
        pidfile = self.paths(inv).machines_dir / f"forward-{port}.pid"
        if _forwarder_alive(pidfile):
            return port
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        import subprocess

        vip = str(inv.control_plane.virtual_ip)
        proc = subprocess.run(
            [sys.executable, "-m", "provision.lab.nsproxy", "forward", lab_netns(inv.name),
             str(port), vip, str(inv.control_plane.port), "--daemon", "--pidfile", str(pidfile)],
            capture_output=True, text=True, timeout=15,
        )
        if proc.returncode != 0:
            raise ProviderError(f"API forward on 127.0.0.1:{port} failed: {proc.stderr.strip()}")
        deadline = time.monotonic() + 5
        while not _forwarder_alive(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        return port

    def spawn_in_lab(self, inv: Any, name: str, argv: list[str]) -> int:
        """Run a provisioner-side service (the artifact mirror) detached inside the lab
        namespace, where nodes reach it on the gateway address (providers/services.py:
        reused while its arguments stay the same); destroy stops it."""
        self._ensure_lab(inv)
        return services.spawn(self.paths(inv).machines_dir, name, argv,
                              prefix=["ip", "netns", "exec", lab_netns(inv.name)])

    def destroy_lab(self, inv: Any) -> None:
        """The cluster's lab namespace and everything running in it (forwarders, mirrors)."""
        machines = self.paths(inv).machines_dir
        if machines.is_dir():
            for pf in machines.glob("forward-*.pid"):
                _kill_pidfile(pf)
            for service_file in machines.glob("service-*"):
                service_file.unlink(missing_ok=True)  # its process is in the lab: killed below
        lab = lab_netns(inv.name)
        kill_all(netns.pids_in(lab))
        netns.delete(lab)
        if machines.is_dir() and not any(machines.iterdir()):
            machines.rmdir()

    # --- internals -----------------------------------------------------------------

    def _ensure_lab(self, inv: Any) -> None:
        prefix = _subnet(inv).prefixlen
        netns.ensure_bridge(lab_netns(inv.name), f"{_gateway(inv)}/{prefix}")

    def _prepare(self, inv: Any, node: Any, lay: NodeLayout, rootfs: Path) -> None:
        paths = self.paths(inv)
        lay.dir.mkdir(parents=True, exist_ok=True)
        meta = json.loads(lay.meta.read_text()) if lay.meta.exists() else {}
        lower = Path(meta.get("lower", rootfs))
        if not lower.is_dir():
            raise ProviderError(
                f"the image {lower} that {node.name}'s disk was made on is gone from the "
                f"cache; `provision destroy` the node (its disk is lost) and create it again")
        meta.update(cluster=inv.name, node=node.name, address=str(node.address),
                    machine=lay.machine, netns=lay.netns, veth=lay.veth, cgroup=lay.cgroup,
                    lower=str(lower), lab=lab_netns(inv.name))
        _write_json(lay.meta, meta)
        lay.containerd.mkdir(exist_ok=True)
        lay.kubelet.mkdir(exist_ok=True)
        mounts.mount_overlay(lower, lay.upper, lay.work, lay.root)
        self._inject(inv, node, lay, paths)
        mac = getattr(node, "mac", None) or netns.node_mac(inv.name, node.name)
        netns.ensure_node_link(lab_netns(inv.name), lay.netns, lay.veth, str(mac))
        netns.forget_neighbor(lab_netns(inv.name), str(node.address))
        cgroups.create(lay.cgroup, cpus=_cpus(node), memory=_memory(node))

    def _inject(self, inv: Any, node: Any, lay: NodeLayout, paths: ClusterPaths) -> None:
        """The node's identity and access, written into its disk before it boots."""
        root = lay.root
        etc = root / "etc"
        hostkey = etc / "ssh" / "ssh_host_ed25519_key"
        if not hostkey.exists():  # first boot: a fresh identity
            key = Ed25519PrivateKey.generate()
            write_secret(hostkey, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption()))
            pub = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
            (etc / "ssh" / "ssh_host_ed25519_key.pub").write_text(f"{pub} root@{node.name}\n")
            (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
        self._record_host_key(paths, node, lay)

        (etc / "hostname").write_text(f"{node.name}\n")
        hosts = etc / "hosts"
        # Only a fresh machine gets this minimal file: the hosts stage owns /etc/hosts
        # afterwards (every node of the cluster) and a restart must not undo it.
        current = hosts.read_text().splitlines() if hosts.exists() else []
        if not any(line.split()[:2] == [str(node.address), node.name] for line in current):
            hosts.write_text(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"{node.address}\t{node.name}\n")
        prefix = _subnet(inv).prefixlen
        network = etc / "systemd" / "network"
        network.mkdir(parents=True, exist_ok=True)
        (network / "10-eth0.network").write_text(
            "# Written by provision: the node's static address from the inventory.\n"
            "[Match]\nName=eth0\n\n"
            f"[Network]\nAddress={node.address}/{prefix}\nGateway={_gateway(inv)}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\nKeepConfiguration=static\n")
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        write_secret(ssh_dir / "authorized_keys", paths.ssh_public_key.read_text())

    def _record_host_key(self, paths: ClusterPaths, node: Any, lay: NodeLayout) -> None:
        """known_hosts gets the key we generated (read from the node's disk, never from
        the network), keyed by the node's address."""
        pub = (lay.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        _set_known_host(paths.known_hosts, str(node.address), f"{pub[0]} {pub[1]}")

    def _machine_spec(self, lay: NodeLayout, node: Any) -> nspawn.MachineSpec:
        return nspawn.MachineSpec(
            name=lay.machine, root=lay.root, netns=lay.netns, hostname=node.name,
            pidfile=lay.pidfile, console_log=lay.console_log,
            cgroup_procs=[p / "cgroup.procs" for p in cgroups.group_paths(lay.cgroup)],
            binds=[(lay.containerd, "/var/lib/containerd"), (lay.kubelet, "/var/lib/kubelet")],
        )

    def _wait_ssh(self, inv: Any, nodes: Sequence[Any], say: Any) -> None:
        paths = self.paths(inv)
        user = getattr(getattr(inv, "ssh", None), "user", None) or "root"
        lab = lab_netns(inv.name)

        def wait(node: Any) -> str | None:
            lay = self.layout(inv, node)
            deadline = time.monotonic() + self.ssh_timeout
            last: Exception | None = None
            while time.monotonic() < deadline:
                if lay.pid() is None:
                    return f"{node.name}: the machine exited; see {lay.console_log}"
                try:
                    sock = nsproxy.connect_in(lab, str(node.address), SSH_PORT, timeout=3)
                    probe(str(node.address), SSH_PORT, user, paths.ssh_private_key,
                          paths.known_hosts, sock=sock, timeout=10)
                    say(node.name, "SSH reachable")
                    return None
                except Exception as e:  # noqa: BLE001 - retried until the deadline
                    last = e
                    time.sleep(0.3)
            return (f"{node.name}: no SSH on {node.address} after {self.ssh_timeout:.0f}s "
                    f"({last}); see {lay.console_log}")

        wait_all(nodes, wait, "lab machines")

    def _stop(self, lay: NodeLayout, timeout: float) -> None:
        pid = lay.pid()
        if pid is not None:
            nspawn.terminate(pid, lay.machine, timeout)
        lay.pidfile.unlink(missing_ok=True)
        if cgroups.exists(lay.cgroup):
            cgroups.remove(lay.cgroup)
        mounts.umount_all_under(lay.root)
        nspawn.remove_propagate_dir(lay.machine)
        kill_all(netns.pids_in(lay.netns))
        netns.delete_link(lab_netns(lay.cluster), lay.veth)
        netns.delete(lay.netns)

    def _destroy_node(self, inv: Any, name: str) -> None:
        lay = self.layout(inv, name)
        address = None
        try:
            address = json.loads(lay.meta.read_text()).get("address")
        except (OSError, ValueError):
            with contextlib.suppress(AttributeError, KeyError):
                address = str(inv.node(name).address)
        self._stop(lay, timeout=10)
        if lay.dir.exists():
            mounts.remove_tree(lay.dir)
        if address:
            _set_known_host(self.paths(inv).known_hosts, address, None)


# --- helpers ---------------------------------------------------------------------------


# Every lab machine shares the box's kernel and, without user namespaces, root's
# inotify budget: systemd, containerd's CNI config watcher and the kubelet each take
# instances. Debian's default of 128 instances runs out with a few nodes ("failed to
# create fsnotify watcher: too many open files" from containerd's CRI plugin), so the
# provider raises the limits as kind documents. It only ever raises them.
INOTIFY_MINIMUMS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
}


def raise_inotify_limits(say: Any) -> None:
    for key, minimum in INOTIFY_MINIMUMS.items():
        path = Path("/proc/sys") / key
        try:
            current = int(path.read_text())
            if current < minimum:
                path.write_text(f"{minimum}\n")
                say(f"raised {key.replace('/', '.')} from {current} to {minimum} (lab machines)")
        except (OSError, ValueError) as exc:
            raise ProviderError(f"cannot raise {key.replace('/', '.')} to {minimum}: {exc}; "
                                f"run `sysctl -w {key.replace('/', '.')}={minimum}` as root"
                                ) from exc


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _set_known_host(known_hosts: Path, address: str, key: str | None) -> None:
    """Replace the lines for ``address`` with ``key`` (None: just remove them)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    lock_path = known_hosts.with_name(known_hosts.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
        kept = [ln for ln in lines if ln.split(" ", 1)[0].split(",")[0] not in
                (address, f"[{address}]:{SSH_PORT}")]
        if key:
            kept.append(f"{address} {key}")
        if kept != lines:
            tmp = known_hosts.with_name(known_hosts.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, known_hosts)


def _close_ssh_masters(paths: ClusterPaths, names: list[str]) -> None:
    try:
        from provision.executors.ssh import close_masters

        close_masters(paths, names)
    except Exception:  # noqa: BLE001 - best effort: the masters die with the lab anyway
        pass


def _forwarder_alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"provision.lab.nsproxy" in argv and b"forward" in argv


def _kill_pidfile(pidfile: Path) -> None:
    if _forwarder_alive(pidfile):
        kill_all([int(pidfile.read_text())])
    pidfile.unlink(missing_ok=True)


def kill_all(pids: list[int], timeout: float = 5) -> None:
    """SIGTERM ``pids`` (never this process), then SIGKILL what is still alive after
    ``timeout`` seconds; returns once they are gone or zombies, or the second wait ends."""
    import signal

    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in pids if not procs.gone(p)]
            if not pids:
                return
            time.sleep(0.1)
