"""Waiting for a VM: until it accepts the cluster key over SSH (the shared wait loop,
provision/providers/machine.py, with a VM's liveness and timeouts), then until its
boot is over (cloud-init done, systemd no longer starting): under TCG sshd answers
long before that, and the next stage wants the whole node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provision.errors import ProviderError
from provision.inventory import Inventory, Node
from provision.providers.libvirt.connection import console_tail
from provision.providers.libvirt.domain import VMLayout
from provision.providers.machine import SSH_PORT, Connect, Login, SSHWait, session

if TYPE_CHECKING:
    import libvirt

BOOT_WAIT = ("cloud-init status --wait >/dev/null 2>&1; "
             "timeout {t} systemctl is-system-running --wait; "
             "systemctl --failed --no-legend --plain | awk '{{print $1}}'")
KVM_HINT = " KVM guests hang on some hosts: try PROVISION_LIBVIRT_ACCEL=tcg."


def ssh_wait(inv: Inventory, conn: libvirt.virConnect, connect: Connect, timeout: float,
             kvm: bool) -> SSHWait:
    login = Login.cluster(inv)

    def gone(node: Node) -> str | None:
        import libvirt

        try:
            active = conn.lookupByName(VMLayout(inv.name, node.name).domain).isActive()
        except libvirt.libvirtError as e:
            return f"libvirt virDomainLookupByName failed: {e}"
        return None if active else "the VM powered off while booting"

    def look(node: Node) -> str:
        log = VMLayout(inv.name, node.name).console_log
        return f"\n  console log: {log}{console_tail(log)}"

    def booted(node: Node, seconds: float) -> str:
        try:
            return f"booted ({boot_finished(login, connect, node.address, seconds)})"
        except Exception as e:  # noqa: BLE001 - reported with the console
            raise ProviderError(f"waiting for the end of boot failed ({e})") from e

    return SSHWait(what="VMs", login=login, connect=connect, gone=gone, look=look,
                   timeout=timeout, connect_timeout=5, login_timeout=20, pause=2,
                   hint=KVM_HINT if kvm else "", timed=True, then=booted)


def boot_finished(login: Login, connect: Connect, address: str, timeout: float) -> str:
    """Block until cloud-init is done and systemd left 'starting' (strict host key).
    Returns 'running', or 'degraded: <failed units>'."""
    with session(login, address, sock=connect(address, SSH_PORT, 10), timeout=20) as client:
        _, stdout, _ = client.exec_command(BOOT_WAIT.format(t=int(timeout)),
                                           timeout=timeout + 30)
        lines = stdout.read().decode(errors="replace").split()
    if not lines or lines[0] not in ("running", "degraded"):
        raise ProviderError(f"systemd is {lines[0] if lines else 'unknown'!r} "
                            "(boot did not finish)")
    return lines[0] if lines[0] == "running" else f"degraded: {', '.join(lines[1:])}"


__all__ = ["BOOT_WAIT", "KVM_HINT", "boot_finished", "ssh_wait"]
