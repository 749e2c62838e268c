"""A private libvirtd for tests and benchmarks, in a network namespace it creates.

PID 1 on the build box is not systemd, so nothing starts libvirtd for us; and other
suites may run their own libvirtd at the same time. This one is fully private:

* a network namespace ``<name>`` (VM bridges, taps and firewall rules live there;
  nothing touches the host's own network); an existing one (a lab namespace beside
  lab machines) is used as it is and kept;
* a private mount namespace where /run/libvirt, /etc/libvirt, /var/lib/libvirt and
  /var/cache/libvirt are bind mounts of ``<dir>/...`` (no clash with another libvirtd,
  no leftovers in the host's directories). /var/log/libvirt is shared: the VM console
  logs the provider writes there are readable from the host;
* ``qemu.conf``: ``security_driver = "none"``, qemu as root, no cgroups, no private
  /dev, stdio to files (no virtlogd);
* a directory storage pool ``<pool>`` in ``<dir>/pool``.

Clients connect with ``qemu+unix:///system?socket=<dir>/run/libvirt-sock``.
``stop()`` always tears everything down: domains, networks, libvirtd, every process
left in the namespace, the namespace, the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from provision.lab import netns
from provision.lab.procs import kill_all

LIBVIRTD_CONF = """\
# private test libvirtd: unix socket only, root only
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
"""

QEMU_CONF = """\
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"""

BINDS = ("run/libvirt", "etc/libvirt", "var/lib/libvirt", "var/cache/libvirt")


class LabLibvirtd:
    def __init__(self, name: str, base: Path | None = None, pool: str = "pvtest") -> None:
        self.name = name  # also the network namespace
        self.dir = (base or Path("/tmp")) / name
        self.pool_name = pool
        self.proc: subprocess.Popen[bytes] | None = None
        self.clusters: list[str] = []  # whose VM logs stop() removes
        # False when the namespace existed before (a lab namespace holding lab
        # machines): stop() then ends only libvirtd and its VMs and keeps the namespace.
        self.own_netns = True

    @property
    def socket(self) -> Path:
        return self.dir / "run/libvirt/libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def log(self) -> Path:
        return self.dir / "libvirtd.log"

    def start(self, timeout: float = 60) -> None:
        for sub in BINDS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "pool").mkdir(exist_ok=True)
        for sub in ("var/lib/libvirt/dnsmasq", "var/lib/libvirt/qemu", "var/lib/libvirt/network"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)  # the package makes these
        (self.dir / "etc/libvirt/libvirtd.conf").write_text(LIBVIRTD_CONF)
        (self.dir / "etc/libvirt/qemu.conf").write_text(QEMU_CONF)
        Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)
        self.own_netns = not netns.exists(self.name)
        netns.ensure(self.name)
        mounts = "; ".join(f"mkdir -p /{sub}; mount --bind {self.dir / sub} /{sub}"
                           for sub in BINDS)
        script = (f"set -e; {mounts}; exec libvirtd -f /etc/libvirt/libvirtd.conf "
                  f"-p /run/libvirt/libvirtd.pid")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["nice", "-n", "10", "ip", "netns", "exec", self.name, "unshare", "--mount",
                 "--propagation", "private", "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not start (exit {self.proc.poll()}):\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        self._define_pool()

    def _define_pool(self) -> None:
        import libvirt

        conn = libvirt.open(self.uri)
        try:
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>{self.pool_name}</name>"
                f"<target><path>{self.dir / 'pool'}</path></target></pool>", 0)
            pool.create(0)
        finally:
            conn.close()

    def inventory(self) -> dict[str, str]:
        """providers.libvirt settings for an inventory using this libvirtd."""
        return {"uri": self.uri, "pool": self.pool_name, "netns": self.name}

    def leftovers(self) -> dict[str, list[str]]:
        """Domains, networks and volumes (other than pv-base-*) still defined."""
        import libvirt

        conn = libvirt.open(self.uri)
        try:
            pool = conn.storagePoolLookupByName(self.pool_name)
            pool.refresh(0)
            return {
                "domains": [d.name() for d in conn.listAllDomains(0)],
                "networks": [n.name() for n in conn.listAllNetworks(0)],
                "volumes": [v for v in pool.listVolumes() if not v.startswith("pv-base-")],
            }
        finally:
            conn.close()

    def qemu_pids(self) -> list[int]:
        out = []
        for pid in netns.pids_in(self.name):
            with contextlib.suppress(OSError):
                if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
        return out

    def stop(self) -> None:
        """Tear everything down; never raises for things already gone."""
        with contextlib.suppress(Exception):
            self._undefine_all()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.own_netns:
            kill_all(netns.pids_in(self.name), timeout=10)  # qemu, dnsmasq, anything else left
            netns.delete(self.name)
        else:
            kill_all(self.qemu_pids(), timeout=10)
        for cluster in self.clusters:  # libvirt's own domain logs (<domain>.log)
            for f in Path("/var/log/libvirt/qemu").glob(f"pv-{cluster}-*"):
                f.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _undefine_all(self) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        conn = libvirt.open(self.uri)
        names = []
        try:
            for dom in conn.listAllDomains(0):
                names.append(dom.name())
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
            for net in conn.listAllNetworks(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if net.isActive():
                        net.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    net.undefine()
        finally:
            conn.close()
        for n in names:
            for f in (f"{n}.log", f"{n}-console.log"):
                Path("/var/log/libvirt/qemu", f).unlink(missing_ok=True)
