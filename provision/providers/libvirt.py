"""Virtual machines through libvirt (libvirt-python): one domain per node.

Per node, in the inventory's storage pool and libvirt host:

    domain  pv-<cluster>-<node>             rendered from templates/libvirt-domain.xml.j2
    volume  pv-<cluster>-<node>.qcow2       overlay whose backing file is the base image
    volume  pv-<cluster>-<node>-seed.iso    NoCloud seed: hostname, address, SSH keys
    console /var/log/libvirt/qemu/pv-<cluster>-<node>-console.log  (the serial port)

Shared by every VM made from one image (a cache, never removed by destroy):

    volumes pv-base-<recipe>-<hash>.qcow2 / .vmlinuz / .initrd   (direct kernel boot)

The VMs attach to an existing libvirt network (``providers.libvirt.network``), an
existing bridge (``bridge``), or by default to an isolated network ``pv-<cluster>``
that the provider creates with the subnet's gateway on its bridge and removes when the
cluster's last VM goes. When ``netns`` is set the network lives in that namespace of
this host (a lab), and SSH goes through ``provision.lab.nsproxy`` like lab machines.

A VM that exists is reused: a spec that changed in the inventory (CPUs, memory, disk,
image, MAC, address, network) is reported (``drift``), never applied. The domain's
metadata records the spec it was created with, so nothing depends on local state.
Every libvirt failure names the call that failed and the VM's console log.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jinja2

from provision.errors import ProviderError
from provision.executors.ssh import SSHEndpoint, ensure_cluster_keypair
from provision.lab import netns as labnet
from provision.lab import nsproxy, vmimage
from provision.paths import ClusterPaths
from provision.providers import cloudinit, services
from provision.providers.base import (
    MachineState,
    Problem,
    Progress,
    problem,
    quiet_if_none,
    raise_if_invalid,
    wait_all,
)
from provision.providers.local import _set_known_host, parse_size
from provision.providers.sshprobe import probe

NS = "https://provision.dev/libvirt/v1"
SSH_PORT = 22
MiB = 1 << 20
CONSOLE_DIR = "/var/log/libvirt/qemu"

# Smallest memory a node can do its job in (kubeadm's preflight wants 1700 MB on a
# control plane; a worker runs the kubelet, containerd, kube-proxy and the CNI).
MIN_MEMORY = {"control-plane": 1700 * MiB, "etcd": 768 * MiB, "worker": 1024 * MiB}
MIN_MEMORY_ANY = 512 * MiB

# The spec keys a VM is created with and compared against on reuse.
SPEC_KEYS = ("cpus", "memory", "disk", "image", "mac", "address", "attachment")

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(["xml", "j2"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def _libvirt() -> Any:
    import libvirt

    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def accel_override() -> str | None:
    """PROVISION_LIBVIRT_ACCEL=kvm|tcg forces the accelerator (auto otherwise)."""
    value = os.environ.get("PROVISION_LIBVIRT_ACCEL", "auto").strip().lower()
    return value if value in ("kvm", "tcg") else None


@dataclass(frozen=True)
class VMLayout:
    """Every name one VM uses."""

    cluster: str
    node: str

    @property
    def domain(self) -> str:
        return f"pv-{self.cluster}-{self.node}"

    @property
    def disk_volume(self) -> str:
        return f"{self.domain}.qcow2"

    @property
    def seed_volume(self) -> str:
        return f"{self.domain}-seed.iso"

    @property
    def console_log(self) -> str:
        return f"{CONSOLE_DIR}/{self.domain}-console.log"

    def mac(self, explicit: str | None) -> str:
        if explicit:
            return explicit.lower()
        h = hashlib.sha256(f"{self.cluster}/{self.node}".encode()).digest()
        return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def owned_network_name(cluster: str) -> str:
    return f"pv-{cluster}"


def owned_bridge_name(cluster: str) -> str:
    # Linux limits interface names to 15 characters.
    return "pvv" + hashlib.sha256(cluster.encode()).hexdigest()[:10]


def base_volume_names(img: vmimage.VMImage) -> dict[str, str]:
    return {"disk": f"pv-base-{img.name}.qcow2", "kernel": f"pv-base-{img.name}.vmlinuz",
            "initrd": f"pv-base-{img.name}.initrd"}


class LibvirtCallFailed(ProviderError):
    pass


@contextmanager
def libvirt_call(what: str, node: str | None = None,
                 console: str | None = None) -> Iterator[None]:
    """Turn a libvirtError into a ProviderError naming the call and the console log."""
    lv = _libvirt()
    try:
        yield
    except lv.libvirtError as e:
        where = f" for {node}" if node else ""
        tail = ""
        if console:
            tail = f"\n  console log: {console}" + _console_tail(console)
        raise LibvirtCallFailed(f"libvirt {what}{where} failed: {e}{tail}") from e


def _console_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    | {ln}" for ln in text)


class LibvirtProvider:
    name = "libvirt"
    ssh_timeout_tcg = 900.0  # seconds from start to SSH under TCG (about 10x slower)
    ssh_timeout_kvm = 300.0
    stop_timeout = 120.0  # ACPI shutdown before a hard power-off

    def __init__(self) -> None:
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        # tests replace this to write volumes on drivers without upload (test:///)
        self.upload: Callable[[Any, Any, bytes | Path], None] = _upload

    # --- settings and connection ------------------------------------------------------

    def settings(self, inv: Any) -> Any:
        s = getattr(inv.providers, "libvirt", None)
        if s is None:
            from provision.inventory.model import LibvirtSettings as Settings

            s = Settings()
        return s

    def connect(self, uri: str) -> Any:
        with self._lock:
            conn = self._conns.get(uri)
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except Exception:  # noqa: BLE001 - reconnect below
                    pass
            with libvirt_call(f"virConnectOpen({uri!r})"):
                conn = _libvirt().open(uri)
            self._conns[uri] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                with suppress(Exception):  # closing a dead connection
                    conn.close()
            self._conns.clear()

    def layout(self, inv: Any, node: Any) -> VMLayout:
        return VMLayout(inv.name, node if isinstance(node, str) else node.name)

    def paths(self, inv: Any) -> ClusterPaths:
        return ClusterPaths.for_cluster(inv.name)

    def domain_type(self, conn: Any) -> str:
        """'kvm' when the host offers it (and it is not overridden), else 'qemu' (TCG)."""
        forced = accel_override()
        if forced:
            return "kvm" if forced == "kvm" else "qemu"
        try:
            conn.getDomainCapabilities(None, "x86_64", None, "kvm")
            return "kvm"
        except Exception:  # noqa: BLE001 - no KVM: TCG
            return "qemu"

    # --- static checks -----------------------------------------------------------------

    def check(self, inv: Any, nodes: Sequence[Any]) -> list[Problem]:
        out: list[Problem] = []
        s = self.settings(inv)
        where = "providers.libvirt"
        try:
            _libvirt()
        except ImportError:
            return [problem(inv, where, "libvirt-python is not installed",
                            hint="pip install 'provision[libvirt]' (needs libvirt-dev, "
                            "pkg-config)")]
        img = None
        try:
            recipe = vmimage.find_recipe(s.image)
            if not recipe.is_built():
                missing = vmimage.build_requirements()
                if missing:
                    out.append(problem(inv, f"{where}.image", f"image {s.image!r} is not "
                                       f"built and building it needs: {', '.join(missing)}"))
            img = recipe
        except Exception as e:  # noqa: BLE001 - BadInput from the recipe lookup
            out.append(problem(inv, f"{where}.image", str(e),
                               hint="add a recipe with kind = \"vm\" under images/"))
        out += self._check_nodes(inv, nodes, img)
        if s.netns and not labnet.exists(s.netns):
            out.append(problem(inv, f"{where}.netns", f"network namespace {s.netns!r} does "
                               "not exist", hint=f"create it (`ip netns add {s.netns}`) and "
                               "run libvirtd in it, or remove netns"))
        try:
            conn = self.connect(s.uri)
        except ProviderError as e:
            return out + [problem(inv, f"{where}.uri", f"cannot connect to {s.uri}: {e}",
                                  hint="is libvirtd running and the URI right? "
                                  "`virsh -c URI list` shows the same error")]
        out += self._check_host(inv, conn, s, nodes)
        return out

    def _check_nodes(self, inv: Any, nodes: Sequence[Any], recipe: Any) -> list[Problem]:
        out = []
        subnet = ipaddress.ip_network(str(inv.network.subnet), strict=False)
        base_size = recipe.size if recipe is not None else 0
        for node in nodes:
            at = f"nodes[{node.name}].machine"
            cpus, memory, disk = self._size(inv, node)
            if cpus is None or memory is None or disk is None:
                out.append(problem(inv, at, "a libvirt machine needs cpus, memory and disk",
                                   hint="set them on the node or in providers.libvirt.defaults"))
                continue
            need = max([MIN_MEMORY_ANY] + [MIN_MEMORY.get(r, 0) for r in node.roles])
            if memory < need:
                roles = "/".join(sorted(node.roles))
                out.append(problem(inv, f"{at}.memory",
                                   f"{memory // MiB} MiB is too little for a {roles} VM "
                                   f"(needs at least {need // MiB} MiB)",
                                   hint=f"memory: {-(-need // MiB)}Mi or more"))
            if disk < base_size:
                out.append(problem(inv, f"{at}.disk", f"{disk // MiB} MiB is smaller than "
                                   f"the image ({base_size // MiB} MiB)",
                                   hint=f"disk: {base_size >> 30}Gi or more"))
            if ipaddress.ip_address(str(node.address)) not in subnet:
                out.append(problem(inv, f"nodes[{node.name}].address",
                                   f"{node.address} is outside the node subnet {subnet}"))
        return out

    def _check_host(self, inv: Any, conn: Any, s: Any, nodes: Sequence[Any]) -> list[Problem]:
        lv = _libvirt()
        out: list[Problem] = []
        where = "providers.libvirt"
        try:
            pool = conn.storagePoolLookupByName(s.pool)
            if not pool.isActive():
                out.append(problem(inv, f"{where}.pool", f"storage pool {s.pool!r} on {s.uri} "
                                   "is not active", hint=f"virsh pool-start {s.pool}"))
        except lv.libvirtError as e:
            pools = _names(conn.listAllStoragePools)
            out.append(problem(inv, f"{where}.pool", f"unknown storage pool {s.pool!r} on "
                               f"{s.uri}: {e.get_error_message()}",
                               hint=f"pools there: {', '.join(pools) or 'none'}"))
        if s.network:
            try:
                net = conn.networkLookupByName(s.network)
                if not net.isActive():
                    out.append(problem(inv, f"{where}.network", f"libvirt network "
                                       f"{s.network!r} on {s.uri} is not active",
                                       hint=f"virsh net-start {s.network}"))
            except lv.libvirtError as e:
                nets = _names(conn.listAllNetworks)
                out.append(problem(inv, f"{where}.network", f"unknown libvirt network "
                                   f"{s.network!r} on {s.uri}: {e.get_error_message()}",
                                   hint=f"networks there: {', '.join(nets) or 'none'}; or "
                                   "remove network to let provision create one"))
        elif s.bridge:
            if _is_local(s.uri) and not _lab_bridge(inv, s):
                present = (labnet.link_exists(s.netns, s.bridge) if s.netns
                           else Path(f"/sys/class/net/{s.bridge}/bridge").is_dir())
                if not present:
                    out.append(problem(inv, f"{where}.bridge", f"no bridge {s.bridge!r}"
                                       + (f" in network namespace {s.netns}" if s.netns
                                          else " on this host")))
        else:
            name = owned_network_name(inv.name)
            try:
                net = conn.networkLookupByName(name)
                if _network_cluster(net) != inv.name:
                    out.append(problem(inv, f"{where}.network", f"a libvirt network {name!r} "
                                       "exists and was not created by provision for this "
                                       "cluster", hint="set network: to use it, or remove it"))
            except lv.libvirtError:
                pass
        for node in nodes:
            lay = self.layout(inv, node)
            try:
                dom = conn.lookupByName(lay.domain)
            except lv.libvirtError:
                continue
            if _domain_meta(dom).get("cluster") != inv.name:
                out.append(problem(inv, f"nodes[{node.name}].name", f"a libvirt domain "
                                   f"{lay.domain!r} exists and is not this cluster's",
                                   hint="rename the cluster or remove that domain"))
        return out

    def _size(self, inv: Any, node: Any) -> tuple[int | None, int | None, int | None]:
        defaults = getattr(self.settings(inv), "defaults", None)
        m = getattr(node, "machine", None)

        def pick(key: str) -> Any:
            v = getattr(m, key, None) if m is not None else None
            return v if v is not None else (getattr(defaults, key, None) if defaults else None)

        return pick("cpus"), parse_size(pick("memory")), parse_size(pick("disk"))

    def spec(self, inv: Any, node: Any, img_name: str) -> dict[str, str]:
        """What a VM for this node is made of: compared with the domain's metadata."""
        s = self.settings(inv)
        cpus, memory, disk = self._size(inv, node)
        attachment = (f"network:{s.network}" if s.network else
                      f"bridge:{s.bridge}" if s.bridge else
                      f"network:{owned_network_name(inv.name)}")
        return {"cpus": str(cpus), "memory": str(memory), "disk": str(disk),
                "image": img_name, "mac": self.layout(inv, node).mac(node.mac),
                "address": str(node.address), "attachment": attachment}

    # --- rendering ----------------------------------------------------------------------

    def render_domain(self, inv: Any, node: Any, *, domain_type: str, img: Any,
                      disk: str, seed: str, kernel: str, initrd: str,
                      host_key: str = "") -> str:
        s = self.settings(inv)
        lay = self.layout(inv, node)
        spec = self.spec(inv, node, img.name)
        if host_key:
            spec["hostkey"] = host_key
        return _TEMPLATES.get_template("libvirt-domain.xml.j2").render(
            domain_type=domain_type, name=lay.domain, node=lay.node, cluster=lay.cluster,
            ns=NS, spec=spec, memory_kib=int(spec["memory"]) // 1024, cpus=spec["cpus"],
            kernel=kernel, initrd=initrd, cmdline=img.cmdline, disk=disk, seed=seed,
            bridge=s.bridge, network=s.network or owned_network_name(inv.name),
            mac=spec["mac"], console_log=lay.console_log,
        )

    def render_network(self, inv: Any) -> str:
        subnet = ipaddress.ip_network(str(inv.network.subnet), strict=False)
        return _TEMPLATES.get_template("libvirt-network.xml.j2").render(
            name=owned_network_name(inv.name), cluster=inv.name, ns=NS,
            bridge=owned_bridge_name(inv.name), gateway=_gateway(inv),
            prefix=subnet.prefixlen,
        )

    def seed(self, inv: Any, node: Any, host_key: cloudinit.HostKey,
             authorized_key: str) -> cloudinit.Seed:
        subnet = ipaddress.ip_network(str(inv.network.subnet), strict=False)
        lay = self.layout(inv, node)
        return cloudinit.Seed(
            instance_id=f"{lay.domain}-{hashlib.sha256(host_key.public.encode()).hexdigest()[:8]}",
            hostname=node.name, mac=lay.mac(node.mac), address=str(node.address),
            prefix=subnet.prefixlen, gateway=_gateway(inv), authorized_key=authorized_key,
            host_key=host_key,
        )

    # --- lifecycle ----------------------------------------------------------------------

    def ensure(self, inv: Any, nodes: Sequence[Any], progress: Progress | None = None) -> None:
        say = quiet_if_none(progress)
        raise_if_invalid(self, inv, nodes)
        if not nodes:
            return
        s = self.settings(inv)
        conn = self.connect(s.uri)
        dtype = self.domain_type(conn)
        if dtype != "kvm":
            say("*", "WARNING: KVM is not usable here (or PROVISION_LIBVIRT_ACCEL=tcg): VMs run "
                "under TCG software emulation, about 10x slower (minutes to boot)")
        img = vmimage.ensure_vm_image(s.image, lambda m: say("*", m))
        paths = self.paths(inv)
        ensure_cluster_keypair(paths)
        pool = conn.storagePoolLookupByName(s.pool)
        base = self._ensure_base_volumes(conn, pool, img, say)
        if not s.network and not s.bridge:
            self._ensure_network(inv, conn, say)
        elif _lab_bridge(inv, s):
            # the lab bridge is shared with lab machines: whichever provider runs first
            # makes it (idempotent, the same call the local provider uses)
            prefix = ipaddress.ip_network(str(inv.network.subnet), strict=False).prefixlen
            labnet.ensure_bridge(s.netns, f"{_gateway(inv)}/{prefix}")
        for node in nodes:
            self._ensure_vm(inv, conn, pool, node, img, base, dtype, say)
        self._wait_ssh(inv, nodes, dtype, say)

    def _ensure_base_volumes(self, conn: Any, pool: Any, img: Any,
                             say: Callable[[str, str], None]) -> dict[str, str]:
        """The image's disk, kernel and initrd as volumes of the pool (uploaded once).
        The initrd goes last: its presence at full size means the set is complete."""
        lv = _libvirt()
        names = base_volume_names(img)
        files = {"disk": img.disk, "kernel": img.kernel, "initrd": img.initrd}
        with libvirt_call(f"virStoragePoolRefresh({pool.name()})"):
            pool.refresh(0)
        try:
            done = pool.storageVolLookupByName(names["initrd"])
            complete = done.info()[1] == files["initrd"].stat().st_size
        except lv.libvirtError:
            complete = False
        out = {}
        for key in ("disk", "kernel", "initrd"):
            name, src = names[key], files[key]
            try:
                vol = pool.storageVolLookupByName(name)
                if not complete:
                    with libvirt_call(f"virStorageVolDelete({name})"):
                        vol.delete(0)
                    raise LookupError
            except (lv.libvirtError, LookupError):
                say("*", f"uploading {name} ({src.stat().st_size >> 20} MiB) to pool "
                    f"{pool.name()}")
                xml = (f"<volume><name>{name}</name><capacity unit='bytes'>"
                       f"{src.stat().st_size}</capacity><allocation>0</allocation>"
                       "<target><format type='raw'/></target></volume>")
                with libvirt_call(f"virStorageVolCreateXML({name})"):
                    vol = pool.createXML(xml, 0)
                with libvirt_call(f"virStorageVolUpload({name})"):
                    self.upload(conn, vol, src)
            out[key] = vol.path()
        return out

    def _ensure_network(self, inv: Any, conn: Any, say: Callable[[str, str], None]) -> None:
        lv = _libvirt()
        name = owned_network_name(inv.name)
        try:
            net = conn.networkLookupByName(name)
        except lv.libvirtError:
            say("*", f"creating libvirt network {name} ({inv.network.subnet}, isolated)")
            with libvirt_call(f"virNetworkDefineXML({name})"):
                net = conn.networkDefineXML(self.render_network(inv))
        if not net.isActive():
            with libvirt_call(f"virNetworkCreate({name})"):
                net.create()

    def _ensure_vm(self, inv: Any, conn: Any, pool: Any, node: Any, img: Any,
                   base: dict[str, str], dtype: str, say: Callable[[str, str], None]) -> None:
        lv = _libvirt()
        lay = self.layout(inv, node)
        paths = self.paths(inv)
        try:
            dom = conn.lookupByName(lay.domain)
        except lv.libvirtError:
            dom = None
        if dom is not None:
            meta = _domain_meta(dom)
            drift = _drift(meta, self.spec(inv, node, img.name))
            for line in drift:
                say(node.name, f"WARNING: spec drift not applied: {line} (destroy and "
                    "re-create the node to apply it)")
            if meta.get("hostkey"):
                _set_known_host(paths.known_hosts, str(node.address), meta["hostkey"])
            if dom.isActive():
                say(node.name, "running, reused")
                return
            say(node.name, "starting (existing VM)")
            with libvirt_call("virDomainCreate", node.name, lay.console_log):
                dom.create()
            return
        say(node.name, f"creating VM {lay.domain}")
        key = cloudinit.HostKey.generate()
        host_pub = " ".join(key.public.split()[:2])
        seed = self.seed(inv, node, key, paths.ssh_public_key.read_text())
        iso = cloudinit.build_iso(seed.files())
        seed_vol = self._replace_volume(
            pool, lay.seed_volume,
            f"<volume><name>{lay.seed_volume}</name><capacity unit='bytes'>{len(iso)}"
            "</capacity><target><format type='raw'/></target></volume>")
        with libvirt_call(f"virStorageVolUpload({lay.seed_volume})", node.name):
            self.upload(conn, seed_vol, iso)
        _, _, disk = self._size(inv, node)
        disk_vol = self._replace_volume(
            pool, lay.disk_volume,
            f"<volume><name>{lay.disk_volume}</name><capacity unit='bytes'>{disk}</capacity>"
            "<target><format type='qcow2'/></target>"
            f"<backingStore><path>{base['disk']}</path><format type='qcow2'/></backingStore>"
            "</volume>")
        xml = self.render_domain(inv, node, domain_type=dtype, img=img, disk=disk_vol.path(),
                                 seed=seed_vol.path(), kernel=base["kernel"],
                                 initrd=base["initrd"], host_key=host_pub)
        # Known before the first boot: the first SSH connection is already strict.
        _set_known_host(paths.known_hosts, str(node.address), host_pub)
        _truncate_console(lay.console_log, s_uri=self.settings(inv).uri)
        with libvirt_call("virDomainDefineXML", node.name):
            dom = conn.defineXML(xml)
        say(node.name, f"starting VM ({dtype})")
        with libvirt_call("virDomainCreate", node.name, lay.console_log):
            dom.create()

    def _replace_volume(self, pool: Any, name: str, xml: str) -> Any:
        lv = _libvirt()
        try:
            old = pool.storageVolLookupByName(name)
            with libvirt_call(f"virStorageVolDelete({name})"):
                old.delete(0)
        except lv.libvirtError:
            pass
        with libvirt_call(f"virStorageVolCreateXML({name})"):
            return pool.createXML(xml, 0)

    def _wait_ssh(self, inv: Any, nodes: Sequence[Any], dtype: str,
                  say: Callable[[str, str], None]) -> None:
        s = self.settings(inv)
        paths = self.paths(inv)
        user = getattr(getattr(inv, "ssh", None), "user", None) or "root"
        timeout = self.ssh_timeout_kvm if dtype == "kvm" else self.ssh_timeout_tcg
        conn = self.connect(s.uri)
        lv = _libvirt()

        def wait(node: Any) -> str | None:
            lay = self.layout(inv, node)
            started = time.monotonic()
            deadline = started + timeout
            last: Exception | None = None
            while time.monotonic() < deadline:
                try:
                    if not conn.lookupByName(lay.domain).isActive():
                        return (f"{node.name}: the VM powered off while booting; console log: "
                                f"{lay.console_log}{_console_tail(lay.console_log)}")
                except lv.libvirtError as e:
                    return f"{node.name}: libvirt virDomainLookupByName failed: {e}"
                try:
                    sock = _connect(s.netns, str(node.address), SSH_PORT, timeout=5)
                    probe(str(node.address), SSH_PORT, user, paths.ssh_private_key,
                          paths.known_hosts, sock=sock, timeout=20)
                except Exception as e:  # noqa: BLE001 - retried until the deadline
                    last = e
                    time.sleep(2)
                    continue
                say(node.name, f"SSH reachable after {time.monotonic() - started:.0f}s")
                # sshd answers long before boot ends under TCG: wait for cloud-init and
                # systemd to finish, so the node is whole when the next stage starts.
                try:
                    state = _boot_finished(s.netns, str(node.address), user, paths,
                                           max(30.0, deadline - time.monotonic()))
                except Exception as e:  # noqa: BLE001 - reported with the console
                    return (f"{node.name}: SSH works but waiting for the end of boot failed "
                            f"({e}); console log: {lay.console_log}"
                            f"{_console_tail(lay.console_log)}")
                say(node.name, f"booted ({state}) after {time.monotonic() - started:.0f}s")
                return None
            hint = (" KVM guests hang on some hosts: try PROVISION_LIBVIRT_ACCEL=tcg."
                    if dtype == "kvm" else "")
            return (f"{node.name}: no SSH on {node.address} after {timeout:.0f}s ({last})."
                    f"{hint}\n  console log: {lay.console_log}{_console_tail(lay.console_log)}")

        wait_all(nodes, wait, "VMs")

    def observe(self, inv: Any, nodes: Sequence[Any]) -> dict[str, MachineState]:
        lv = _libvirt()
        conn = self.connect(self.settings(inv).uri)
        out = {}
        for node in nodes:
            lay = self.layout(inv, node)
            try:
                dom = conn.lookupByName(lay.domain)
            except lv.libvirtError:
                out[node.name] = MachineState.MISSING
                continue
            out[node.name] = MachineState.RUNNING if dom.isActive() else MachineState.STOPPED
        return out

    def drift(self, inv: Any, nodes: Sequence[Any]) -> dict[str, list[str]]:
        """Node -> how its existing VM differs from the inventory (for ``plan``)."""
        lv = _libvirt()
        s = self.settings(inv)
        conn = self.connect(s.uri)
        img_name = self.image_name(s.image)
        out: dict[str, list[str]] = {}
        for node in nodes:
            try:
                dom = conn.lookupByName(self.layout(inv, node).domain)
            except lv.libvirtError:
                continue
            diff = _drift(_domain_meta(dom), self.spec(inv, node, img_name))
            if diff:
                out[node.name] = diff
        return out

    def image_name(self, image: str) -> str:
        """<recipe>-<hash> of the image the inventory names now (what drift compares)."""
        try:
            recipe = vmimage.find_recipe(image)
        except Exception:  # noqa: BLE001 - reported by check()
            return "?"
        return f"{recipe.name}-{recipe.digest}"

    def start(self, inv: Any, node: Any) -> None:
        lv = _libvirt()
        s = self.settings(inv)
        conn = self.connect(s.uri)
        lay = self.layout(inv, node)
        try:
            dom = conn.lookupByName(lay.domain)
        except lv.libvirtError as e:
            raise ProviderError(f"VM {lay.domain} of {node.name} does not exist "
                                f"(virDomainLookupByName: {e}): run `provision up`") from e
        if not dom.isActive():
            with libvirt_call("virDomainCreate", node.name, lay.console_log):
                dom.create()
        self._wait_ssh(inv, [node], self.domain_type(conn), lambda _n, _m: None)

    def stop(self, inv: Any, node: Any) -> None:
        """ACPI shutdown (the guest powers off cleanly), hard power-off after a timeout."""
        lv = _libvirt()
        conn = self.connect(self.settings(inv).uri)
        lay = self.layout(inv, node)
        try:
            dom = conn.lookupByName(lay.domain)
        except lv.libvirtError:
            return
        _power_off(dom, lay, node.name if not isinstance(node, str) else node,
                   self.stop_timeout)

    def destroy(self, inv: Any, nodes: Sequence[Any]) -> None:
        lv = _libvirt()
        s = self.settings(inv)
        conn = self.connect(s.uri)
        paths = self.paths(inv)
        names = [n if isinstance(n, str) else n.name for n in nodes]
        try:
            from provision.executors.ssh import close_masters

            close_masters(paths, names)
        except Exception:  # noqa: BLE001 - best effort: masters die with the VMs
            pass
        try:
            pool = conn.storagePoolLookupByName(s.pool)
            pool.refresh(0)
        except lv.libvirtError:
            pool = None
        for name in names:
            lay = self.layout(inv, name)
            address = None
            try:
                dom = conn.lookupByName(lay.domain)
            except lv.libvirtError:
                dom = None
            if dom is not None:
                address = _domain_meta(dom).get("address")
                if dom.isActive():
                    with libvirt_call("virDomainDestroy", name, lay.console_log):
                        dom.destroy()
                with libvirt_call("virDomainUndefine", name):
                    dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            if pool is not None:
                for vol_name in (lay.disk_volume, lay.seed_volume):
                    try:
                        vol = pool.storageVolLookupByName(vol_name)
                    except lv.libvirtError:
                        continue
                    with libvirt_call(f"virStorageVolDelete({vol_name})", name):
                        vol.delete(0)
            if _is_local(s.uri):
                Path(lay.console_log).unlink(missing_ok=True)
            if address is None:
                with suppress(AttributeError, KeyError):
                    address = str(inv.node(name).address)
            if address:
                _set_known_host(paths.known_hosts, address, None)
        if not self._cluster_domains(inv, conn):
            self._stop_services(inv)
            if not s.network and not s.bridge:
                self._destroy_network(inv, conn)

    def _cluster_domains(self, inv: Any, conn: Any) -> list[str]:
        out = []
        for dom in conn.listAllDomains(0):
            if _domain_meta(dom).get("cluster") == inv.name:
                out.append(dom.name())
        return out

    def _destroy_network(self, inv: Any, conn: Any) -> None:
        lv = _libvirt()
        name = owned_network_name(inv.name)
        try:
            net = conn.networkLookupByName(name)
        except lv.libvirtError:
            return
        if _network_cluster(net) != inv.name:
            return  # not ours: never remove it
        if net.isActive():
            with libvirt_call(f"virNetworkDestroy({name})"):
                net.destroy()
        with libvirt_call(f"virNetworkUndefine({name})"):
            net.undefine()

    def spawn_in_lab(self, inv: Any, name: str, argv: list[str]) -> int:
        """Run a provisioner-side service (the artifact mirror) detached where the VMs
        reach the gateway: inside ``netns`` when set, else in this host's namespace
        (the owned network's bridge holds the gateway there for local URIs).
        Reused while its arguments stay the same (providers/services.py); destroy
        stops it with the cluster's last VM."""
        s = self.settings(inv)
        if not _is_local(s.uri):
            raise ProviderError(f"the artifact mirror, which the nodes install from with "
                                f"either artifacts.source, cannot run beside VMs on a remote "
                                f"libvirt host ({s.uri})")
        prefix = ["ip", "netns", "exec", s.netns] if s.netns else []
        return services.spawn(self.paths(inv).machines_dir, name, argv, prefix=prefix)

    def _stop_services(self, inv: Any) -> None:
        services.stop_all(self.paths(inv).machines_dir)

    def ssh_endpoint(self, inv: Any, node: Any) -> SSHEndpoint:
        s = self.settings(inv)
        proxy = (f"{sys.executable} -m provision.lab.nsproxy connect {s.netns} %h %p"
                 if s.netns else None)
        return SSHEndpoint(address=str(node.address), port=SSH_PORT, proxy_command=proxy)


# --- helpers ----------------------------------------------------------------------------


def _gateway(inv: Any) -> str:
    gw = getattr(inv.network, "gateway", None)
    if gw:
        return str(gw)
    return str(next(ipaddress.ip_network(str(inv.network.subnet), strict=False).hosts()))


def _lab_bridge(inv: Any, s: Any) -> bool:
    """VMs on the lab bridge of this cluster's own lab namespace (beside lab machines)."""
    return bool(s.netns and s.bridge == labnet.BRIDGE and s.netns == f"pv-{inv.name}")


def _names(lister: Callable[[int], list[Any]]) -> list[str]:
    try:
        return sorted(x.name() for x in lister(0))
    except Exception:  # noqa: BLE001 - only for a hint
        return []


def _is_local(uri: str) -> bool:
    u = urlparse(uri)
    return not u.hostname and "+ssh" not in u.scheme and "+tcp" not in u.scheme \
        and "+tls" not in u.scheme


def _domain_meta(dom: Any) -> dict[str, str]:
    """The provision metadata of a domain ({} for a domain provision did not make)."""
    try:
        xml = dom.metadata(_libvirt().VIR_DOMAIN_METADATA_ELEMENT, NS)
    except Exception:  # noqa: BLE001 - no metadata in our namespace
        return {}
    root = ET.fromstring(xml)
    out: dict[str, str] = {}
    for child in root:
        tag = child.tag.split("}")[-1]
        if tag == "spec":
            out[child.get("name", "")] = child.text or ""
        else:
            out[tag] = child.text or ""
    return out


def _network_cluster(net: Any) -> str | None:
    root = ET.fromstring(net.XMLDesc(0))
    for el in root.iter():
        if el.tag == f"{{{NS}}}cluster":
            return el.text
    return None


def _drift(meta: dict[str, str], want: dict[str, str]) -> list[str]:
    out = []
    for key in SPEC_KEYS:
        have = meta.get(key)
        if have is not None and have != want.get(key):
            out.append(f"{key}: VM has {_show(key, have)}, inventory says "
                       f"{_show(key, want.get(key, ''))}")
    return out


def _show(key: str, value: str) -> str:
    if key in ("memory", "disk") and value.isdigit():
        return f"{int(value) // MiB}Mi"
    return value


def _upload(conn: Any, vol: Any, src: bytes | Path) -> None:
    """Stream bytes or a file into a volume (works for remote libvirt hosts too)."""
    stream = conn.newStream(0)
    try:
        size = len(src) if isinstance(src, bytes) else src.stat().st_size
        vol.upload(stream, 0, size, 0)
        if isinstance(src, bytes):
            view = memoryview(src)
            while view:
                n = stream.send(view[: 1 << 20].tobytes())
                view = view[n:]
        else:
            with open(src, "rb") as f:
                stream.sendAll(lambda _s, nbytes, fh: fh.read(nbytes), f)
        stream.finish()
    except BaseException:
        with suppress(Exception):  # already failed
            stream.abort()
        raise


def _truncate_console(path: str, s_uri: str) -> None:
    # append='on' keeps every boot of a VM; a new VM starts with an empty log.
    if _is_local(s_uri):
        with suppress(OSError):
            Path(path).unlink(missing_ok=True)


BOOT_WAIT = ("cloud-init status --wait >/dev/null 2>&1; "
             "timeout {t} systemctl is-system-running --wait; "
             "systemctl --failed --no-legend --plain | awk '{{print $1}}'")


def _boot_finished(netns: str | None, address: str, user: str, paths: ClusterPaths,
                   timeout: float) -> str:
    """Block until cloud-init is done and systemd left 'starting' (strict host key).
    Returns 'running', or 'degraded: <failed units>'."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(paths.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(address, port=SSH_PORT, username=user,
                       key_filename=str(paths.ssh_private_key), look_for_keys=False,
                       allow_agent=False, timeout=20, banner_timeout=20, auth_timeout=20,
                       sock=_connect(netns, address, SSH_PORT, timeout=10))
        _, stdout, _ = client.exec_command(BOOT_WAIT.format(t=int(timeout)),
                                           timeout=timeout + 30)
        lines = stdout.read().decode(errors="replace").split()
    finally:
        client.close()
    if not lines or lines[0] not in ("running", "degraded"):
        raise ProviderError(f"systemd is {lines[0] if lines else 'unknown'!r} "
                            "(boot did not finish)")
    return lines[0] if lines[0] == "running" else f"degraded: {', '.join(lines[1:])}"


def _connect(netns: str | None, host: str, port: int, timeout: float) -> socket.socket:
    if netns:
        return nsproxy.connect_in(netns, host, port, timeout=timeout)
    return socket.create_connection((host, port), timeout=timeout)


def _power_off(dom: Any, lay: VMLayout, node: str, timeout: float) -> None:
    lv = _libvirt()
    if not dom.isActive():
        return
    with suppress(lv.libvirtError):
        dom.shutdown()  # ACPI: needs <acpi/>, which the template always sets
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not dom.isActive():
                return
        except lv.libvirtError:
            return
        time.sleep(1)
    with libvirt_call("virDomainDestroy", node, lay.console_log):
        dom.destroy()
