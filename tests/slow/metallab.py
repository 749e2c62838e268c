"""Bare metal on one box, for the slow tier and the bench: virtual machines with empty
disks that boot from the network first, driven only through the BMC emulators the
bare-metal world uses in its own CI.

* a private libvirtd (libvirtd_lab.py) in the cluster's lab namespace ``pv-<cluster>``;
  each "bare-metal machine" is a TCG domain defined there (never by provision): an
  empty qcow2 disk, a NIC with the inventory's MAC on the lab bridge ``br-lab``, boot
  order network then disk, and a serial console log;
* Redfish: ``sushy-emulator`` (sushy-tools) with its libvirt driver on loopback, HTTP
  basic auth (bcrypt htpasswd), limited to the test's domains;
* IPMI: ``vbmcd`` (virtualbmc) on loopback with a private config directory, one
  ``vbmc`` per machine.

The cluster: lab machine ``cp-1`` (local provider: control plane, artifact mirror in
the lab namespace) and the pxe machines as workers; ``with_vm`` configures the libvirt
provider too, in the same namespace and libvirtd, for the VM ``vm-1`` of vmcluster.py
that ``write_inventory(with_vm=...)`` adds or leaves out: the slow tier boots its TCG
guests once, for both providers. provision's dnsmasq and boot
HTTP server run in the lab namespace on br-lab. ``metal_lab()`` always removes
everything: provision destroy, the BMC emulators, libvirtd, the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from libvirtd_lab import LabLibvirtd
from vmcluster import VM_MEMORY, VMCluster, cluster_yaml, libvirt_yaml, vm_yaml

NET = "10.254.9"
FORWARD_PORT = 16464
VM_ADDRESS = f"{NET}.31"  # vm-1, when the lab has it
DISK = "6Gi"
MEMORY_MIB = 1536


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Machine:
    """One emulated bare-metal machine and its BMCs: the inventory names ``bmc``; an
    IPMI BMC (virtualbmc) can drive the same machine beside its Redfish one."""

    name: str
    mac: str
    address: str
    bmc: str  # redfish | ipmi: the one the inventory names
    domain: str = ""
    uuid: str = ""
    ports: dict[str, int] = field(default_factory=dict)  # BMC kind -> its port

    def bmc_yaml(self, password_ref: str, kind: str = "") -> str:
        kind = kind or self.bmc
        if kind == "redfish":
            return (f"{{type: redfish, address: 'http://127.0.0.1:{self.ports[kind]}', "
                    f"username: admin, password: {password_ref}, systemId: {self.uuid}, "
                    "insecure: true}")
        return (f"{{type: ipmi, address: '127.0.0.1:{self.ports[kind]}', username: ADMIN, "
                f"password: {password_ref}}}")


@dataclass
class MetalLab(VMCluster):
    machines: list[Machine] = field(default_factory=list)
    password: str = ""
    with_vm: bool = False
    boot_timeout: int = 1500
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    silent: Machine | None = None

    # --- the inventory -------------------------------------------------------------------

    def inventory_text(self, machines: list[Machine] | None = None,  # type: ignore[override]
                       password_ref: str = "env:PV_TEST_BMC_PASSWORD",
                       bmc: dict[str, str] | None = None, with_vm: bool | None = None,
                       vm_memory: str = VM_MEMORY) -> str:
        """``bmc``: machine name -> the BMC kind the inventory names instead of its own."""
        pxe = "".join(
            f"  - {{name: {m.name}, roles: [worker], provider: pxe, address: {m.address},\n"
            f"     mac: '{m.mac}', machine: {{rootDevice: /dev/vda}},\n"
            f"     bmc: {m.bmc_yaml(password_ref, (bmc or {}).get(m.name, ''))}}}\n"
            for m in (self.machines if machines is None else machines))
        providers = (f"  pxe: {{interface: br-lab, netns: pv-{self.cluster}, "
                     f"bootTimeout: {self.boot_timeout}}}\n")
        vm = self.with_vm if with_vm is None else with_vm
        if self.with_vm:
            providers += libvirt_yaml(self.cluster, self.lab)
        return cluster_yaml(self.cluster, NET, FORWARD_PORT, providers,
                            (vm_yaml(VM_ADDRESS, vm_memory) if vm else "") + pxe)

    # --- the cluster as the test sees it ----------------------------------------------------

    def wait_ssh(self, node: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.ssh(node, "true", timeout=30, check=False).returncode == 0:
                    return
            time.sleep(5)
        raise AssertionError(f"{node} did not answer SSH within {timeout}s")

    # --- the machines as the test sees them (not through provision) ----------------------

    def domain_state(self, machine: Machine) -> str:
        import libvirt

        conn = libvirt.open(self.lab.uri)
        try:
            return "running" if conn.lookupByName(machine.domain).isActive() else "shut off"
        finally:
            conn.close()

    def console(self, machine: Machine) -> str:
        path = self.tmp / f"{machine.name}-console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- set-up --------------------------------------------------------------------------

    def define(self, machine: Machine, mac: str = "") -> None:
        """An empty disk, network boot first: what provision powers on via the BMC.
        ``mac``: the NIC's, when it is not the one the machine is known by."""
        import libvirt

        conn = libvirt.open(self.lab.uri)
        try:
            pool = conn.storagePoolLookupByName(self.lab.pool_name)
            vol = f"{machine.domain}.qcow2"
            pool.createXML(f"<volume><name>{vol}</name><capacity unit='bytes'>"
                           f"{6 << 30}</capacity><target><format type='qcow2'/></target>"
                           "</volume>", 0)
            path = pool.storageVolLookupByName(vol).path()
            console = self.tmp / f"{machine.name}-console.log"
            dom = conn.defineXML(f"""
<domain type='qemu'>
  <name>{machine.domain}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{path}'/><target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='br-lab'/><mac address='{mac or machine.mac}'/><model type='virtio'/>
    </interface>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{console}' append='on'/><target type='serial'/></console>
  </devices>
</domain>""")
            machine.uuid = dom.UUIDString()
        finally:
            conn.close()

    def start_redfish(self, machines: list[Machine]) -> None:
        import bcrypt

        port = _free_port()
        htpasswd = self.tmp / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"admin:{hashed}\n")
        config = self.tmp / "sushy.conf"
        config.write_text(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
                          f"SUSHY_EMULATOR_LIBVIRT_URI = {self.lab.uri!r}\n"
                          f"SUSHY_EMULATOR_ALLOWED_INSTANCES = "
                          f"{[m.uuid for m in machines]!r}\n")
        log = (self.tmp / "sushy-emulator.log").open("wb")
        self.procs.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("sushy-emulator")), "-i", "127.0.0.1",
             "-p", str(port), "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/redfish/v1/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401: it answers
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError("sushy-emulator did not answer: "
                               + (self.tmp / "sushy-emulator.log").read_text()[-2000:])
        for m in machines:
            m.ports["redfish"] = port

    def start_ipmi(self, machines: list[Machine]) -> None:
        config_dir = self.tmp / "vbmc"
        config_dir.mkdir(exist_ok=True)
        server_port = _free_port()
        (config_dir / "virtualbmc.conf").write_text(
            f"[default]\nserver_port = {server_port}\nconfig_dir = {config_dir}\n"
            f"pid_file = {config_dir / 'vbmcd.pid'}\n[log]\nlogfile = {config_dir / 'vbmcd.log'}\n")
        env = {**os.environ, "VIRTUALBMC_CONFIG": str(config_dir / "virtualbmc.conf")}
        vbmc = str(Path(sys.executable).with_name("vbmc"))
        log = (self.tmp / "vbmcd.log").open("wb")
        self.procs.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("vbmcd")), "--foreground"], env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True))
        time.sleep(2)
        for m in machines:
            m.ports["ipmi"] = _free_port(socket.SOCK_DGRAM)
            for argv in ([vbmc, "add", m.domain, "--address", "127.0.0.1", "--port",
                          str(m.ports["ipmi"]), "--username", "ADMIN", "--password", self.password,
                          "--libvirt-uri", self.lab.uri], [vbmc, "start", m.domain]):
                for _ in range(20):  # vbmcd takes a moment to listen
                    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
                    if proc.returncode == 0:
                        break
                    time.sleep(0.5)
                else:
                    raise RuntimeError(f"{' '.join(argv[:3])}: {proc.stderr}")

    def stop_emulators(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def events(self, node: str) -> list[str]:
        from provision.paths import ClusterPaths

        path = ClusterPaths.for_cluster(self.cluster).machines_dir / "pxe" / "events" \
            / f"{node}.log"
        return path.read_text().splitlines() if path.exists() else []

    def record(self, node: str) -> dict[str, object]:
        from provision.paths import ClusterPaths

        path = ClusterPaths.for_cluster(self.cluster).machines_dir / "pxe" / "machines" \
            / f"{node}.json"
        return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def metal_lab(tmp: Path, cluster: str, bmcs: tuple[str, ...] = ("redfish",), *,
              with_vm: bool = False, ipmi_too: bool = False, silent: bool = False
              ) -> Iterator[MetalLab]:
    """The emulated machines defined, their BMCs answering, the images built and the
    inventory written; nothing of provision's created yet. Always torn down.

    ``bmcs``: one machine per entry, behind that BMC. ``with_vm``: the libvirt VM vm-1
    joins the inventory too. ``ipmi_too``: every machine also answers IPMI (virtualbmc
    on the same domain). ``silent``: one more machine, ``ml.silent`` (not in the
    inventory), behind IPMI, whose NIC is not the MAC it is known by: it never gets an
    answer from dnsmasq, so it never network-boots."""
    from provision import commands
    from provision.lab import metalimage, vmimage
    from provision.lab.cleanup import sweep

    keys = ("PROVISION_STATE_DIR", "PV_TEST_BMC_PASSWORD", "PROVISION_LIBVIRT_ACCEL")
    saved = {k: os.environ.get(k) for k in keys}
    password = secrets.token_urlsafe(12)
    os.environ["PROVISION_STATE_DIR"] = str(tmp / "state")
    os.environ["PV_TEST_BMC_PASSWORD"] = password
    # FINDINGS: /dev/kvm exists on the build box but KVM guests hang; TCG it is.
    os.environ["PROVISION_LIBVIRT_ACCEL"] = "tcg"
    lab = LabLibvirtd(f"pv-{cluster}")
    lab.clusters.append(cluster)
    machines = [Machine(f"metal-{i}", f"52:54:00:9b:00:{i:02x}", f"{NET}.{20 + i}", kind,
                        domain=f"pvbm-{cluster}-metal-{i}")
                for i, kind in enumerate(bmcs, 1)]
    ml = MetalLab(cluster=cluster, lab=lab, tmp=tmp, path=tmp / "inventory.yaml",
                  machines=machines, password=password, with_vm=with_vm)
    try:
        started = time.monotonic()
        metalimage.ensure_metal_image("debian-12")
        if with_vm:
            vmimage.ensure_vm_image("debian-12")
        ml.timings["image_ready"] = round(time.monotonic() - started, 1)
        lab.start()
        for m in machines:
            ml.define(m)
        if silent:
            ml.silent = Machine("metal-9", "52:54:00:9b:00:99", f"{NET}.29", "ipmi",
                                domain=f"pvbm-{cluster}-metal-9")
            ml.define(ml.silent, mac="52:54:00:9b:00:98")
        if any(m.bmc == "redfish" for m in machines):
            ml.start_redfish([m for m in machines if m.bmc == "redfish"])
        ipmi = [m for m in machines if m.bmc == "ipmi" or ipmi_too]
        if ml.silent:
            ipmi.append(ml.silent)
        if ipmi:
            ml.start_ipmi(ipmi)
        ml.write_inventory()
        yield ml
    finally:
        if not ml.destroyed and ml.path.exists():
            try:
                commands.destroy(ml.path)
            except Exception as e:  # noqa: BLE001 - the teardown below still runs
                print(f"destroy during teardown failed: {e}")
        ml.stop_emulators()
        lab.stop()
        sweep(cluster, keep=lambda name: name != cluster and not name.startswith(f"{cluster}-"))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
