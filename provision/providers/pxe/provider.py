"""The pxe provider: powered-off machines with empty disks become installed,
SSH-reachable nodes, the way Ironic/Metal3, Tinkerbell and MAAS do it.

For each machine to install (``ensure``), in parallel:

1. a fresh install: a random token, the node's NoCloud seed (hostname, address, the
   cluster's SSH key and a host key generated here, whose public half goes into the
   cluster's ``known_hosts`` now, so SSH is strict from the first connection) and the
   installer's config, under ``machines/pxe/installs/<token>/`` (0700);
2. through the BMC: power off, the next boot from the network, power on;
3. the machine DHCPs (dnsmasq: its fixed address by MAC), chains to iPXE, fetches its
   script (``boot server/node/<mac>.ipxe``) which boots the installer
   (images/metal) with the token; the installer writes the node image to the disk,
   the seed and the boot loader, uploads its log and calls back ``done``;
4. the record says ``installed``: from now on that MAC's script boots from the disk,
   so a machine that network-boots again is never reinstalled; the installer powers
   the machine off, the next boot is set to the disk through the BMC, the machine is
   powered on and answers SSH.

A machine that does not call back within ``bootTimeout`` fails with the last step the
boot server saw for it (power-on, DHCP, TFTP, iPXE script, kernel, initrd, config,
image, seed, log); a failed install fails with the installer's reason and its log.
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from provision.errors import BadInput, ProviderError
from provision.executors.ssh import ensure_cluster_keypair
from provision.inventory import Inventory, Node, Problem, PxeSettings
from provision.inventory.credentials import CredentialUnavailable
from provision.lab import metalimage, netns, nsproxy
from provision.lab.metalimage import MetalImage
from provision.paths import ClusterPaths
from provision.providers import cloudinit, services
from provision.providers.base import (
    Capability,
    Machine,
    MachineState,
    NodeSay,
    Provider,
    SSHEndpoint,
    problem,
    raise_if_invalid,
)
from provision.providers.machine import (
    SSH_PORT,
    Login,
    SSHWait,
    connector,
    pause,
    probe,
    set_known_host,
    wait_all,
)
from provision.providers.pxe import bmc as bmclib
from provision.providers.pxe.boot import STEPS, BootServer, Record
from provision.providers.pxe.server import IMAGE_FILES

DHCP_SERVICE = "pxe-dhcp"
HTTP_SERVICE = "pxe-http"
SSH_TIMEOUT = 600.0  # from power-on to SSH: firmware, then systemd and cloud-init
POWER_OFF_TIMEOUT = 120.0  # from "done" to the installer's own power-off
INSTALLER_CMDLINE = "console=tty0 console=ttyS0,115200n8 net.ifnames=0"
# The disk holding / (what the installer wrote): every partition's signatures, then the
# disk's own (the partition table). The running system keeps going from memory until
# the BMC powers it off.
WIPE_SCRIPT = """set -eu
disk=/dev/$(lsblk -no PKNAME "$(findmnt -no SOURCE /)")
for part in $(lsblk -lnpo NAME,TYPE "$disk" | awk '$2 == "part" {print $1}'); do
  wipefs --all --force "$part" >/dev/null
done
wipefs --all --force "$disk" >/dev/null
sync
"""


def dnsmasq_binary() -> str | None:
    return shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq")
                                       .exists() else None)


class PxeProvider(Provider):
    name = "pxe"
    capabilities = frozenset({Capability.CREATE, Capability.POWER})

    # --- settings ----------------------------------------------------------------------

    def settings(self, inv: Inventory) -> PxeSettings:
        s = inv.providers.pxe
        if s is None:
            raise BadInput("providers.pxe is not configured")
        return s

    def server(self, inv: Inventory) -> BootServer:
        return BootServer.of(inv, ClusterPaths.for_cluster(inv.name).machines_dir)

    # --- validation (nothing touched, no network) -----------------------------------------

    def validate(self, inv: Inventory, nodes: Sequence[Node], *,
                 host: bool = True) -> list[Problem]:
        out: list[Problem] = []
        s = self.settings(inv)
        where = "providers.pxe"
        try:
            metalimage.find_recipe(s.image)
        except BadInput as e:
            out.append(problem(inv, f"{where}.image", str(e),
                               hint="add a recipe with kind = \"metal\" under images/"))
        if not host:
            return out
        if dnsmasq_binary() is None:
            out.append(problem(inv, where, "dnsmasq is not installed",
                               hint="apt-get install dnsmasq-base"))
        if not (Path("/usr/lib/ipxe") / "undionly.kpxe").is_file():
            out.append(problem(inv, where, "iPXE is not installed (/usr/lib/ipxe)",
                               hint="apt-get install ipxe"))
        if any(n.bmc and n.bmc.type == "ipmi" for n in nodes) and not shutil.which("ipmitool"):
            out.append(problem(inv, where, "a node's BMC speaks IPMI and ipmitool is not "
                               "installed", hint="apt-get install ipmitool"))
        if s.netns and not netns.exists(s.netns):
            out.append(problem(inv, f"{where}.netns", f"network namespace {s.netns!r} does "
                               "not exist", hint=f"create it (ip netns add {s.netns}) or "
                               "remove netns"))
        for node in nodes:
            at = f"nodes[{node.name}]"
            if node.bmc is None or node.mac is None:
                continue  # the inventory's own validation says so
            for ref, field in ((node.bmc.password, "password"), (node.bmc.username, "username")):
                if ref.startswith(("env:", "file:")):
                    try:
                        inv.credential(ref)
                    except CredentialUnavailable as e:
                        out.append(problem(inv, f"{at}.bmc.{field}", str(e),
                                           hint="export the variable or create the file "
                                           "before `provision up`"))
        return out

    # --- machines ------------------------------------------------------------------------

    def machines(self, inv: Inventory) -> dict[str, Machine]:
        return {r.node: Machine(r.node, r.address, self.name)
                for r in self.server(inv).records().values()}

    def observe(self, inv: Inventory, names: Sequence[str]) -> dict[str, MachineState]:
        """missing: never installed for this cluster (or its install did not finish);
        stopped: installed, and the BMC says off or SSH does not answer; running:
        installed, on, and it accepts the cluster's login with its own host key."""
        server = self.server(inv)
        records = server.records()
        nodes = {n.name: n for n in inv.nodes}
        out: dict[str, MachineState] = {}
        for name in names:
            record = records.get(name)
            node = nodes.get(name)
            if record is None or record.phase != "installed" or node is None:
                out[name] = MachineState.MISSING
                continue
            if bmclib.connect(inv, node).power() is bmclib.PowerState.OFF:
                out[name] = MachineState.STOPPED
                continue
            out[name] = (MachineState.RUNNING if self._answers(inv, node)
                         else MachineState.STOPPED)
        return out

    def _answers(self, inv: Inventory, node: Node) -> bool:
        try:
            sock = connector(self.settings(inv).netns)(node.address, SSH_PORT, 3)
            probe(Login.cluster(inv), node.address, sock=sock, timeout=10)
        except Exception:  # noqa: BLE001 - not answering is the answer
            return False
        return True

    def ssh_endpoint(self, inv: Inventory, name: str, address: str) -> SSHEndpoint:
        ns = self.settings(inv).netns
        return SSHEndpoint(address=address, port=SSH_PORT,
                           proxy_command=nsproxy.proxy_command(ns) if ns else None)

    # --- lifecycle -----------------------------------------------------------------------

    def ensure(self, inv: Inventory, nodes: Sequence[Node], say: NodeSay) -> set[str]:
        raise_if_invalid(self, inv, nodes)
        if not nodes:
            return set()
        paths = ClusterPaths.for_cluster(inv.name)
        ensure_cluster_keypair(paths)
        states = self.observe(inv, [n.name for n in nodes])
        todo = [n for n in nodes if states[n.name] is not MachineState.RUNNING]
        for node in nodes:
            if node not in todo:
                say(node.name, "installed and running, reused")
        if not todo:
            return set()
        def say_all(message: str) -> None:
            for node in todo:
                say(node.name, message)

        img = metalimage.ensure_metal_image(self.settings(inv).image, say_all)
        server = self.server(inv)
        self._serve(inv, server, img)

        def bring_up(node: Node) -> str | None:
            try:
                if states[node.name] is MachineState.STOPPED:
                    self._boot_from_disk(inv, node, say)
                else:
                    self._install(inv, server, img, node, say)
            except bmclib.BmcError as e:
                return str(e)
            except ProviderError as e:
                return f"{node.name}: {e}"
            return None

        wait_all(todo, bring_up, "bare-metal machines")
        return {n.name for n in todo}

    def start(self, inv: Inventory, node: Node) -> None:
        self._boot_from_disk(inv, node, lambda _n, _m: None)

    def stop(self, inv: Inventory, node: Node) -> None:
        bmc = bmclib.connect(inv, node)
        bmc.power_off()
        bmc.wait_power(bmclib.PowerState.OFF)

    def destroy(self, inv: Inventory, names: Sequence[str], *, wipe: bool = False) -> None:
        """Power off through the BMC and forget the machine: the next ``up`` installs
        it again (its disk belonged to a cluster whose keys are gone). Forgetting is
        what marks a machine for reinstall, so every destroy does it. ``wipe`` also
        erases the disk's partition table and filesystem signatures first (over SSH,
        while the machine still runs): the machine no longer boots its old system,
        and what it held is no longer mounted by anything."""
        server = self.server(inv)
        nodes = {n.name: n for n in inv.nodes}
        paths = ClusterPaths.for_cluster(inv.name)
        if wipe:
            self._wipe(inv, [nodes[n] for n in names
                             if n in nodes and (r := server.record(n)) is not None
                             and r.phase == "installed"])
        for name in names:
            record = server.record(name)
            node = nodes.get(name)
            if node is not None and node.bmc is not None:
                bmc = bmclib.connect(inv, node)
                bmc.power_off()
                bmc.wait_power(bmclib.PowerState.OFF)
            if record is not None:
                set_known_host(paths.known_hosts, record.address, None)
            server.forget(name)
        if not server.records():
            for service in (DHCP_SERVICE, HTTP_SERVICE):
                services.stop(paths.machines_dir / f"service-{service}.pid")
            shutil.rmtree(server.dhcp_root, ignore_errors=True)
            shutil.rmtree(server.root, ignore_errors=True)  # records, events, installs

    def _wipe(self, inv: Inventory, nodes: Sequence[Node]) -> None:
        """Each machine's system disk loses its partitions' and its own signatures
        (wipefs), all machines checked to answer first: a wipe is done everywhere or
        refused before any disk is touched."""
        from provision.providers.machine import session

        silent = [n.name for n in nodes if not self._answers(inv, n)]
        if silent:
            raise ProviderError(
                f"cannot wipe {', '.join(silent)}: not answering SSH with the cluster's "
                "login; start it (provision up), or destroy without --wipe (the machine "
                "is forgotten and reinstalled by the next up either way)")
        for node in nodes:
            with session(Login.cluster(inv), node.address,
                         sock=connector(self.settings(inv).netns)(node.address, SSH_PORT, 10)
                         ) as client:
                _, stdout, stderr = client.exec_command(WIPE_SCRIPT, timeout=120)
                if stdout.channel.recv_exit_status() != 0:
                    raise ProviderError(
                        f"wiping {node.name}'s disk failed: "
                        f"{stderr.read().decode(errors='replace').strip()[-500:]}")

    # --- the boot server ---------------------------------------------------------------

    def _serve(self, inv: Inventory, server: BootServer, img: MetalImage) -> None:
        """dnsmasq and the boot HTTP server, started (or found running) with this
        configuration, answering before any machine is powered on."""
        conf = server.prepare(inv)
        machines = ClusterPaths.for_cluster(inv.name).machines_dir
        prefix = ["ip", "netns", "exec", server.netns] if server.netns else []
        # the configuration file is named after its digest: a change restarts dnsmasq
        dhcp = [dnsmasq_binary() or "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
        pid = services.running(machines, DHCP_SERVICE, dhcp)
        if pid is not None:
            services.reload(pid)  # the hosts file may have changed: dnsmasq re-reads it
        else:
            services.spawn(machines, DHCP_SERVICE, dhcp, prefix=prefix)
        services.spawn(machines, HTTP_SERVICE, [
            sys.executable, "-m", "provision.providers.pxe.server", "--root",
            str(server.root), "--image", str(img.dir), "--address", server.address,
            "--port", str(server.http_port), "--cmdline", INSTALLER_CMDLINE], prefix=prefix)
        self._wait_served(server, machines)

    def _wait_served(self, server: BootServer, machines: Path, timeout: float = 30) -> None:
        from provision.artifacts.serve import in_netns

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{server.url}/boot.ipxe", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if in_netns(server.netns, answers):
                return
            time.sleep(0.3)
        log = machines / f"service-{HTTP_SERVICE}.log"
        raise ProviderError(f"the boot HTTP server did not answer on {server.url} within "
                            f"{timeout:.0f}s; log: {log}")

    # --- one machine ---------------------------------------------------------------------

    def _install(self, inv: Inventory, server: BootServer, img: MetalImage, node: Node,
                 say: NodeSay) -> None:
        assert node.mac is not None
        paths = ClusterPaths.for_cluster(inv.name)
        bmc = bmclib.connect(inv, node)
        record = server.record(node.name) or Record(node.name, node.mac, node.address)
        record.mac, record.address = node.mac, node.address
        host_key = cloudinit.HostKey.generate()
        seed = cloudinit.Seed(
            instance_id=f"pv-{inv.name}-{node.name}-{host_key.public.split()[1][-12:]}",
            hostname=node.name, mac=node.mac, address=node.address,
            prefix=inv.network.ip_network.prefixlen, gateway=str(inv.network.gateway),
            authorized_key=paths.ssh_public_key.read_text(), host_key=host_key)
        config = {"PV_NODE": node.name, "PV_DISK": node.machine.root_device or "",
                  "PV_IMAGE_SIZE": str(img.root_size)}
        record.host_key = " ".join(host_key.public.split()[:2])
        record = server.new_install(record, config, seed.files())
        # Known before the first boot: the first SSH connection is already strict.
        set_known_host(paths.known_hosts, node.address, record.host_key)
        say(node.name, f"powering on through its {bmc.where.split(' of ')[0]} "
                       "(next boot: network)")
        bmc.power_off()
        bmc.wait_power(bmclib.PowerState.OFF)
        bmc.boot_once(bmclib.BootDevice.PXE)
        server.event(record, "power-on")
        bmc.power_on()
        self._wait_installed(inv, server, record, node, bmc, say)
        # The installer powers the machine off; then the next boot is the disk.
        try:
            bmc.wait_power(bmclib.PowerState.OFF, timeout=POWER_OFF_TIMEOUT)
        except bmclib.BmcError:
            bmc.power_off()
            bmc.wait_power(bmclib.PowerState.OFF)
        say(node.name, "installed; booting from its disk")
        bmc.boot_once(bmclib.BootDevice.DISK)
        bmc.power_on()
        self._wait_ssh(inv, node, say, SSH_TIMEOUT)

    def _wait_installed(self, inv: Inventory, server: BootServer, record: Record,
                        node: Node, bmc: bmclib.Bmc, say: NodeSay) -> None:
        timeout = self.settings(inv).boot_timeout
        deadline = record.started + timeout
        said = ""
        while True:
            result = server.result(record)
            if result is not None:
                break
            step, detail = server.last_seen(record)
            if step != said:
                say(node.name, f"install: {step}{f' ({detail})' if detail else ''}")
                said = step
            if time.time() > deadline:
                bmc.power_off()
                server.finish(record, "failed", f"no callback within {timeout}s")
                raise ProviderError(
                    f"{bmc.where}: the install did not report within bootTimeout "
                    f"({timeout}s); the last step seen was {step!r}"
                    f"{f' ({detail})' if detail else ''} of {', '.join(STEPS)}; "
                    f"boot server log: {server.dhcp_log}, "
                    f"events: {server.events_path(node.name)}")
            pause(2)
        status, detail = result
        log = server.finish(record, "installed" if status == "done" else "failed", detail)
        if status != "done":
            raise ProviderError(f"{bmc.where}: the installer failed: {detail}; "
                                f"its log: {log}")

    def _boot_from_disk(self, inv: Inventory, node: Node, say: NodeSay) -> None:
        bmc = bmclib.connect(inv, node)
        say(node.name, "installed: powering on from its disk")
        bmc.boot_once(bmclib.BootDevice.DISK)
        bmc.power_on()
        self._wait_ssh(inv, node, say, SSH_TIMEOUT)

    def _wait_ssh(self, inv: Inventory, node: Node, say: NodeSay, timeout: float) -> None:
        def gone(_node: Node) -> str | None:
            return None

        wait = SSHWait(what="bare-metal machines", login=Login.cluster(inv),
                       connect=connector(self.settings(inv).netns), gone=gone,
                       look=lambda _n: "", timeout=timeout, pause=2, timed=True,
                       then=lambda n, left: _boot_finished(inv, self.settings(inv), n, left))
        error = wait.one(node, say)
        if error:
            raise ProviderError(error)


def _boot_finished(inv: Inventory, s: PxeSettings, node: Node, timeout: float) -> str:
    """cloud-init applied the seed and systemd finished starting."""
    from provision.providers.machine import session

    script = (f"cloud-init status --wait >/dev/null 2>&1; "
              f"timeout {int(timeout)} systemctl is-system-running --wait; true")
    with session(Login.cluster(inv), node.address,
                 sock=connector(s.netns)(node.address, SSH_PORT, 10)) as client:
        _, stdout, _ = client.exec_command(script, timeout=timeout + 30)
        state = stdout.read().decode(errors="replace").strip().splitlines()
    return f"booted ({state[-1] if state else 'unknown'})"


__all__ = ["IMAGE_FILES", "PxeProvider"]
