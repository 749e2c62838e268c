"""Is a machine's sshd up and is it the machine we think it is? (paramiko, strict)."""

from __future__ import annotations

import socket
from pathlib import Path

import paramiko


class HostKeyUnknown(Exception):
    pass


def probe(address: str, port: int, user: str, key_file: Path, known_hosts: Path,
          sock: socket.socket | None = None, timeout: float = 10) -> None:
    """Log in and run ``true``. Raises on any failure; HostKeyUnknown for a missing or
    different host key (never accepts a new one)."""
    client = paramiko.SSHClient()
    try:
        if known_hosts.exists():
            client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                address, port=port, username=user, key_filename=str(key_file),
                look_for_keys=False, allow_agent=False, timeout=timeout,
                banner_timeout=timeout, auth_timeout=timeout, sock=sock,
            )
        except paramiko.BadHostKeyException as e:
            raise HostKeyUnknown(f"host key of {address} differs from {known_hosts}: {e}") from e
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise HostKeyUnknown(f"no host key for {address} in {known_hosts}") from e
            raise
        _, stdout, _ = client.exec_command("true", timeout=timeout)
        if stdout.channel.recv_exit_status() != 0:
            raise OSError(f"`true` failed on {address}")
    finally:
        client.close()
        if sock is not None:
            sock.close()
