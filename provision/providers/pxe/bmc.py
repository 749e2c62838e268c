"""A bare-metal machine's BMC: power and the boot device, through Redfish or IPMI.

Redfish goes through the ``sushy`` library (OpenStack Ironic's client); IPMI through
``ipmitool -I lanplus`` (the pyghmi client cannot talk to every BMC: see
/work/shared/lab/FINDINGS.md). Both are driven the same way by the provider:

    bmc = connect(inv, node)        # resolves the password now, never stores it
    bmc.power()                     # PowerState.ON | OFF
    bmc.boot_once(BootDevice.PXE)   # next boot only
    bmc.power_on() / power_off() / reset()

The password is read from its reference (``env:NAME`` / ``file:/path``) when the BMC
is used, kept in memory only, passed to ipmitool through its environment (``-E``),
never on a command line, and never written to a log, an error or a record. Every
failure raises ``BmcError`` naming the node and the BMC and saying what to check.
"""

from __future__ import annotations

import os
import subprocess
import time
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from provision.errors import ProviderError
from provision.inventory import Inventory, Node
from provision.inventory.model import Bmc as BmcSettings
from provision.providers.machine import pause

if TYPE_CHECKING:
    from sushy.resources.system.system import System

TIMEOUT = 20.0  # seconds for one BMC request


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"


class BootDevice(StrEnum):
    PXE = "pxe"
    DISK = "disk"


class BmcError(ProviderError):
    """A BMC refused or did not answer: names the node and the BMC, never a secret."""


class Bmc(ABC):
    """One machine's management controller."""

    kind: str

    def __init__(self, node: str, settings: BmcSettings, username: str, password: str) -> None:
        self.node = node
        self.settings = settings
        self._username = username
        self._password = password

    def __repr__(self) -> str:  # never the password
        return f"<{type(self).__name__} {self.where}>"

    @property
    def where(self) -> str:
        return f"{self.kind} BMC {self.settings.address} of {self.node}"

    def fail(self, what: str, hint: str) -> BmcError:
        return BmcError(f"{self.where}: {what}; {hint}")

    @abstractmethod
    def power(self) -> PowerState: ...

    @abstractmethod
    def power_on(self) -> None: ...

    @abstractmethod
    def power_off(self) -> None:
        """Hard off: the machine is being (re)installed or released."""

    @abstractmethod
    def boot_once(self, device: BootDevice) -> None:
        """The next boot (only) from ``device``."""

    def wait_power(self, wanted: PowerState, timeout: float = 120) -> None:
        """BMCs apply power changes asynchronously (sushy-tools' fake driver after a
        random delay of seconds; real ones in seconds too): poll."""
        deadline = time.monotonic() + timeout
        while self.power() is not wanted:
            if time.monotonic() > deadline:
                raise self.fail(f"power is still not {wanted} after {timeout:.0f}s",
                                "check the machine in the BMC's own interface")
            pause(1)


# --- Redfish ---------------------------------------------------------------------------


def redfish_url(address: str) -> str:
    """``https://host[:port]`` for a BMC address (a bare host means https)."""
    return address.rstrip("/") if "://" in address else f"https://{address.rstrip('/')}"


class RedfishBmc(Bmc):
    kind = "redfish"

    def __init__(self, node: str, settings: BmcSettings, username: str, password: str) -> None:
        super().__init__(node, settings, username, password)
        self._system: System | None = None

    def _connect(self) -> System:
        import requests
        import sushy
        from sushy import exceptions

        if self._system is not None:
            return self._system
        url = redfish_url(self.settings.address)
        try:
            root = sushy.Sushy(url, username=self._username, password=self._password,
                               verify=self.settings.verify_tls, read_timeout=int(TIMEOUT),
                               connect_timeout=10, server_side_retries=2,
                               server_side_retries_delay=1)
            members = root.get_system_collection().members_identities
            wanted = self.settings.system_id
            if wanted:
                ident = next((m for m in members if m.rstrip("/").rsplit("/", 1)[-1] == wanted),
                             None)
                if ident is None:
                    raise self.fail(f"no Redfish system {wanted!r} (systems: "
                                    f"{', '.join(sorted(members)) or 'none'})",
                                    "fix bmc.systemId")
            elif len(members) == 1:
                ident = next(iter(members))
            else:
                raise self.fail(f"{len(members)} Redfish systems and no bmc.systemId "
                                f"({', '.join(sorted(members)) or 'none'})",
                                "set bmc.systemId to the one of this node")
            self._system = root.get_system(ident)
        except exceptions.AccessError as exc:
            if getattr(exc, "status_code", None) in (401, 403):
                raise self.fail("the BMC refused the login", "check bmc.username and the "
                                "password its reference points at") from None
            raise self.fail(f"access error ({exc.status_code})",
                            "check the account's privileges") from None
        except (exceptions.ConnectionError, requests.exceptions.RequestException) as exc:
            raise self.fail(f"cannot reach {url} ({type(exc).__name__})",
                            "check bmc.address and that the provisioner reaches the BMC "
                            "network") from None
        except exceptions.SushyError as exc:
            raise self.fail(f"unsupported Redfish service: {_first_line(exc)}",
                            "the BMC must offer the Systems collection with power and "
                            "boot-override actions") from None
        return self._system

    def power(self) -> PowerState:
        import sushy
        from sushy import exceptions

        system = self._connect()
        try:
            system.refresh(force=True)
            state = system.power_state
        except exceptions.SushyError as exc:
            raise self.fail(f"reading the power state failed: {_first_line(exc)}",
                            "see the BMC's event log") from None
        on = (sushy.PowerState.ON, sushy.PowerState.POWERING_ON)
        return PowerState.ON if state in on else PowerState.OFF

    def _reset(self, kind: str) -> None:
        import sushy
        from sushy import exceptions

        system = self._connect()
        try:
            system.reset_system(getattr(sushy.ResetType, kind))
        except exceptions.SushyError as exc:
            raise self.fail(f"reset {kind} failed: {_first_line(exc)}",
                            "see the BMC's event log") from None

    def power_on(self) -> None:
        if self.power() is PowerState.OFF:
            self._reset("ON")

    def power_off(self) -> None:
        if self.power() is PowerState.ON:
            self._reset("FORCE_OFF")

    def boot_once(self, device: BootDevice) -> None:
        import sushy
        from sushy import exceptions

        target = sushy.BootSource.PXE if device is BootDevice.PXE else sushy.BootSource.HDD
        system = self._connect()
        try:
            system.set_system_boot_options(
                target=target, enabled=sushy.BootSourceOverrideEnabled.ONCE)
        except exceptions.SushyError as exc:
            raise self.fail(f"setting the next boot to {device} failed: {_first_line(exc)}",
                            "the BMC must support BootSourceOverrideTarget "
                            f"{target.value} with Once") from None


# --- IPMI ------------------------------------------------------------------------------


class IpmiBmc(Bmc):
    kind = "ipmi"

    def _run(self, *args: str, what: str) -> str:
        host, port = _host_port(self.settings.address, 623)
        # -v: the session errors that tell a wrong password (RAKP) from no answer
        argv = ["ipmitool", "-I", "lanplus", "-H", host, "-p", str(port),
                "-U", self._username, "-E", "-N", "2", "-R", "2", "-v", *args]
        env = {**os.environ, "IPMI_PASSWORD": self._password}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                                  timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise self.fail("ipmitool is not installed", "apt-get install ipmitool") from None
        except subprocess.TimeoutExpired:
            raise self.fail(f"{what}: no answer within {TIMEOUT:.0f}s",
                            "check bmc.address and that IPMI over LAN is enabled") from None
        if proc.returncode != 0:
            error = _scrub(proc.stderr, self._password)
            lines = [ln for ln in error.splitlines() if "Error" in ln or "error" in ln
                     or "invalid" in ln]
            said = "; ".join(ln.strip("> ").strip() for ln in lines)[:300] \
                or f"exit {proc.returncode}"
            if "RAKP" in error or "unauthorized name" in error.lower():
                raise self.fail(f"{what}: the BMC refused the login ({said})",
                                "check bmc.username and the password its reference points at")
            if "Get Auth Capabilities" in error or "Get Channel Authentication" in error:
                raise self.fail(f"{what}: no answer from the BMC ({said})",
                                "check bmc.address and that IPMI over LAN is enabled")
            raise self.fail(f"{what} failed: {said}", "see the BMC's event log")
        return proc.stdout

    def power(self) -> PowerState:
        out = self._run("chassis", "power", "status", what="reading the power state")
        return PowerState.ON if out.strip().lower().endswith("on") else PowerState.OFF

    def power_on(self) -> None:
        if self.power() is PowerState.OFF:
            self._run("chassis", "power", "on", what="power on")

    def power_off(self) -> None:
        if self.power() is PowerState.ON:
            self._run("chassis", "power", "off", what="power off")

    def boot_once(self, device: BootDevice) -> None:
        self._run("chassis", "bootdev", "pxe" if device is BootDevice.PXE else "disk",
                  what=f"setting the next boot to {device}")


# --- the node's BMC --------------------------------------------------------------------


def insecure_reason(settings: BmcSettings) -> str | None:
    """Why this Redfish BMC is reached without TLS verification, or None."""
    if settings.type != "redfish":
        return None
    if urlsplit(redfish_url(settings.address)).scheme == "http":
        return "plain http://"
    if not settings.verify_tls:
        return "verifyTLS: false"
    return None


def connect(inv: Inventory, node: Node) -> Bmc:
    """The BMC of a bare-metal node, its credentials resolved now."""
    settings = node.bmc
    if settings is None:
        raise BmcError(f"{node.name} has no bmc in the inventory")
    username = (inv.credential(settings.username)
                if settings.username.startswith(("env:", "file:")) else settings.username)
    password = inv.credential(settings.password)
    cls: type[Bmc] = RedfishBmc if settings.type == "redfish" else IpmiBmc
    return cls(node.name, settings, username, password)


def _host_port(address: str, default: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else default
    host, sep, port = address.partition(":")
    return (host, int(port)) if sep and port.isdigit() else (address, default)


def _first_line(error: object) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


__all__ = ["Bmc", "BmcError", "BootDevice", "IpmiBmc", "PowerState", "RedfishBmc", "connect",
           "insecure_reason", "redfish_url"]
