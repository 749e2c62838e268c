"""The boot server's state and what it serves, as files in the cluster's state
directory (``<state>/clusters/<c>/machines/pxe/``), written by the provider and read
by the two services that serve them (dnsmasq for DHCP and TFTP, the boot HTTP server,
provision/providers/pxe/server.py):

    hosts              <mac>,<address>,<node> per inventory node (dnsmasq re-reads it)
    dnsmasq-<digest>.conf  DHCP (fixed address per MAC) and TFTP (iPXE for BIOS, UEFI)
    tftp/              undionly.kpxe, ipxe.efi, snponly.efi (Debian's ipxe package)
    machines/<node>.json   the provider's record of a node's machine (phase, MAC, token)
    installs/<token>/  one install: config, the NoCloud seed (0600: it holds the node's
                       SSH host key), and what the installer reported (log, result)
    events/<node>.log  what the HTTP server served the node, one line per request
    logs/              the installers' logs

dnsmasq drops its privileges and the state directory is private (0700), so what it
reads after starting lives in ``/run/provision/pxe/pv-<cluster>/`` (0755), rebuilt by
every ``up``:

    dnsmasq-<digest>.conf  DHCP (fixed address per MAC) and TFTP (iPXE for BIOS, UEFI)
    hosts              <mac>,<address>,<node> per inventory node (dnsmasq re-reads it)
    tftp/              undionly.kpxe, ipxe.efi, snponly.efi (Debian's ipxe package)
    dnsmasq.log        dnsmasq's own log (DHCP and TFTP per MAC and address), leases

A machine's phase decides its iPXE script: ``install`` boots the installer with the
install's token; ``installed`` boots from its disk (``exit`` to the firmware, which
tries the next boot device), so a machine that network-boots again is never
reinstalled; ``failed`` shows why and boots nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision import names
from provision.inventory import Inventory, PxeSettings
from provision.paths import RUN_ROOT, write_secret

IPXE_DIR = Path("/usr/lib/ipxe")
RUN_DIR = RUN_ROOT / "pxe"
TFTP_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")

# Steps of an install, in order, as "last seen" reports them
STEPS = ("power-on", "dhcp", "tftp", "ipxe-script", "kernel", "initrd", "config", "image",
         "seed", "log", "done")


def mac_key(mac: str) -> str:
    """52:54:00:aa:00:01 -> 52-54-00-aa-00-01 (iPXE's ${mac:hexhyp}, file names)."""
    return mac.lower().replace(":", "-")


@dataclass
class Record:
    """The provider's record of one bare-metal machine (machines/<node>.json)."""

    node: str
    mac: str
    address: str
    phase: str = "install"  # install | installed | failed
    token: str = ""
    host_key: str = ""  # the public key of the host key the seed carries
    started: float = 0.0  # when the current install was started
    log_offset: int = 0  # size of dnsmasq's log then: what follows is this install's
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class BootServer:
    """Where the boot server listens, and its files."""

    root: Path
    dhcp_root: Path  # what dnsmasq reads after dropping its privileges
    interface: str
    address: str  # serverAddress
    http_port: int
    netns: str | None
    settings: PxeSettings = field(compare=False)

    @classmethod
    def of(cls, inv: Inventory, machines_dir: Path, run_dir: Path = RUN_DIR) -> BootServer:
        s = inv.providers.pxe
        if s is None:
            raise ValueError("providers.pxe is not configured")
        address = str(s.server_address or inv.network.gateway)
        return cls(machines_dir / "pxe", run_dir / names.cluster_object(inv.name),
                   s.interface, address, s.http_port, s.netns, s)

    @property
    def dhcp_log(self) -> Path:
        return self.dhcp_root / "dnsmasq.log"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    # --- files -------------------------------------------------------------------------

    def record_path(self, node: str) -> Path:
        return self.root / "machines" / f"{node}.json"

    def records(self) -> dict[str, Record]:
        return self.records_in(self.root)

    @staticmethod
    def records_in(root: Path) -> dict[str, Record]:
        """Every machine record under a boot server's directory (the server reads them)."""
        out = {}
        for path in sorted((root / "machines").glob("*.json")):
            try:
                out[path.stem] = Record(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def record(self, node: str) -> Record | None:
        return self.records().get(node)

    def save(self, record: Record) -> None:
        path = self.record_path(record.node)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(record.to_json())
        os.replace(tmp, path)

    def forget(self, node: str) -> None:
        record = self.record(node)
        if record and record.token:
            remove_install(self.install_dir(record.token))
        self.record_path(node).unlink(missing_ok=True)
        self.events_path(node).unlink(missing_ok=True)

    def install_dir(self, token: str) -> Path:
        return self.root / "installs" / token

    def events_path(self, node: str) -> Path:
        return self.root / "events" / f"{node}.log"

    def new_install(self, record: Record, config: dict[str, str],
                    seed: dict[str, bytes]) -> Record:
        """A fresh token and its files; the record points at it (phase install)."""
        if record.token:
            remove_install(self.install_dir(record.token))
        token = secrets.token_urlsafe(24)
        d = self.install_dir(token)
        d.mkdir(parents=True, mode=0o700)
        os.chmod(d, 0o700)
        # the installer reads the image through its own token, like everything else
        config = {**config, "PV_IMAGE": f"{self.url}/install/{token}/root.img.zst"}
        (d / "config").write_text("".join(f"{k}={shell_quote(v)}\n" for k, v in config.items()))
        for name, data in seed.items():
            write_secret(d / "seed" / name, data)
        self.events_path(record.node).unlink(missing_ok=True)
        log = self.dhcp_log
        record.phase, record.token, record.started, record.error = "install", token, \
            time.time(), ""
        record.log_offset = log.stat().st_size if log.is_file() else 0
        self.save(record)
        return record

    def result(self, record: Record) -> tuple[str, str] | None:
        """("done" | "failed", what the installer said), once it reported."""
        if not record.token:
            return None
        path = self.install_dir(record.token) / "result"
        if not path.is_file():
            return None
        status, _, detail = path.read_text(errors="replace").partition("\n")
        return status.strip(), detail.strip()

    def install_log(self, record: Record) -> Path:
        return self.install_dir(record.token) / "log"

    # --- what dnsmasq and the HTTP server are given ------------------------------------

    def write_hosts(self, inv: Inventory) -> None:
        lines = [f"{n.mac},{n.address},{n.name}\n" for n in inv.nodes_for_provider("pxe")
                 if n.mac]
        _write(self.dhcp_root / "hosts", "".join(lines))

    def write_dnsmasq_conf(self, inv: Inventory) -> Path:
        """``dnsmasq-<digest>.conf``: named after its content, so that a changed
        configuration is a changed command line (and the service restarts)."""
        net = ipaddress.ip_network(str(inv.network.subnet))
        s = self.settings
        lines = [
            "# Generated by provision (providers/pxe): DHCP and TFTP for network boots.",
            "port=0",  # no DNS
            f"interface={self.interface}",
            "bind-dynamic",
            f"pid-file={self.dhcp_root / 'dnsmasq.pid'}",
            f"log-facility={self.dhcp_log}",
            "log-dhcp",
            f"dhcp-leasefile={self.dhcp_root / 'dnsmasq.leases'}",
            f"dhcp-hostsfile={self.dhcp_root / 'hosts'}",
            "enable-tftp",
            f"tftp-root={self.dhcp_root / 'tftp'}",
            "tftp-secure",
            # iPXE identifies itself with option 175; PXE ROMs get an iPXE to chain to
            "dhcp-match=set:ipxe,175",
            "dhcp-match=set:efi64,option:client-arch,7",
            "dhcp-match=set:efi64,option:client-arch,9",
        ]
        if s.dhcp == "dedicated":
            lines += [f"dhcp-range={net.network_address},static,{net.netmask},1h",
                      f"dhcp-option=option:router,{inv.network.gateway}",
                      "dhcp-authoritative"]
        else:
            lines += [f"dhcp-range={net.network_address},proxy,{net.netmask}",
                      'pxe-prompt="provision",0',
                      "pxe-service=tag:!ipxe,x86PC,\"provision (BIOS)\",undionly.kpxe",
                      "pxe-service=tag:!ipxe,X86-64_EFI,\"provision (UEFI)\",ipxe.efi",
                      f"pxe-service=tag:ipxe,x86PC,\"provision\",{self.url}/boot.ipxe",
                      f"pxe-service=tag:ipxe,X86-64_EFI,\"provision\",{self.url}/boot.ipxe"]
        if not s.answer_unknown:
            lines.append("dhcp-ignore=tag:!known")
        lines += [f"dhcp-boot=tag:ipxe,{self.url}/boot.ipxe",
                  "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
                  "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe"]
        text = "\n".join(lines) + "\n"
        path = self.dhcp_root / f"dnsmasq-{hashlib.sha256(text.encode()).hexdigest()[:12]}.conf"
        for old in self.dhcp_root.glob("dnsmasq-*.conf"):
            if old != path:
                old.unlink()
        _write(path, text)
        return path

    def prepare(self, inv: Inventory) -> Path:
        """Every file the services need, before they start; returns dnsmasq's
        configuration."""
        tftp = self.dhcp_root / "tftp"
        tftp.mkdir(parents=True, exist_ok=True)
        for d in (self.dhcp_root.parent, self.dhcp_root, tftp):
            os.chmod(d, 0o755)
        for name in TFTP_FILES:
            src = IPXE_DIR / name
            if src.is_file() and not (tftp / name).exists():
                (tftp / name).write_bytes(src.read_bytes())
        for sub in ("machines", "installs", "events"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "installs", 0o700)
        self.write_hosts(inv)
        return self.write_dnsmasq_conf(inv)

    # --- an install's progress ---------------------------------------------------------

    def event(self, record: Record, step: str, detail: str = "") -> None:
        path = self.events_path(record.node)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{time.time():.3f} {step} {detail}".rstrip() + "\n")

    def last_seen(self, record: Record) -> tuple[str, str]:
        """The furthest step of the current install the boot server saw: its own
        requests (events/<node>.log) and dnsmasq's DHCP and TFTP answers."""
        seen: dict[str, str] = {}
        events = self.events_path(record.node)
        if events.is_file():
            for line in events.read_text(errors="replace").splitlines():
                _, step, *detail = line.split(" ", 2) + [""]
                seen[step] = detail[0]
        log = self.dhcp_log
        if log.is_file():
            mac = record.mac.lower()
            with log.open("rb") as f:
                f.seek(record.log_offset)
                tail = f.read().decode(errors="replace").splitlines()
            for line in tail:
                low = line.lower()
                if mac in low and ("dhcpack" in low or "dhcpoffer" in low):
                    seen.setdefault("dhcp", line.split("dnsmasq-dhcp", 1)[-1].strip(": "))
                elif " sent " in low and f" to {record.address}" in low:
                    seen.setdefault("tftp", line.rsplit("sent ", 1)[-1])
        for step in reversed(STEPS):
            if step in seen:
                return step, seen[step]
        return "nothing yet", ""

    def finish(self, record: Record, phase: str, detail: str) -> Path:
        """The install ended: keep its log, drop its secrets, record the phase."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        kept = logs / f"{record.node}-{int(record.started)}.log"
        log = self.install_dir(record.token) / "log"
        kept.write_bytes(log.read_bytes() if log.is_file() else b"(no log uploaded)\n")
        remove_install(self.install_dir(record.token))
        record.phase, record.token, record.error = phase, "", detail if phase == "failed" else ""
        self.save(record)
        return kept


# --- iPXE scripts ----------------------------------------------------------------------


def boot_script(url: str) -> str:
    """What every iPXE gets first (dhcp-boot): chain to its own MAC's script."""
    return ("#!ipxe\n"
            "# provision: each machine's script is named after the MAC it booted from\n"
            f"chain --autofree {url}/node/${{mac:hexhyp}}.ipxe || goto failed\n"
            "exit\n"
            ":failed\n"
            "echo provision: no boot script for ${mac}; booting the next device\n"
            "sleep 10\n"
            "exit\n")


def node_script(url: str, record: Record | None, cmdline: str) -> str:
    if record is None:
        return ("#!ipxe\n"
                "echo provision: this machine (${mac}) is not in the inventory\n"
                "sleep 10\nexit\n")
    if record.phase == "installed":
        return ("#!ipxe\n"
                f"echo provision: {record.node} is installed: booting from its disk\n"
                "exit\n")
    if record.phase == "failed" or not record.token:
        return ("#!ipxe\n"
                f"echo provision: the install of {record.node} failed; see `provision up`\n"
                "sleep 60\nexit\n")
    base = f"{url}/install/{record.token}"
    args = (f"initrd=installer.img boot=provision ip=dhcp BOOTIF=01-${{mac:hexhyp}} "
            f"provision.url={base} {cmdline} panic=30")
    return ("#!ipxe\n"
            f"echo provision: installing {record.node}\n"
            f"kernel {base}/vmlinuz {args}\n"
            f"initrd {base}/installer.img\n"
            "boot\n")


# --- helpers ---------------------------------------------------------------------------


_SAFE = re.compile(r"^[A-Za-z0-9_./:@%+=,-]*$")


def shell_quote(value: str) -> str:
    return value if _SAFE.match(value) else "'" + value.replace("'", "'\\''") + "'"


def remove_install(path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = ["STEPS", "BootServer", "Record", "boot_script", "mac_key", "node_script",
           "remove_install", "shell_quote"]
