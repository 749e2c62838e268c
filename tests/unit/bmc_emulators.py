"""BMC emulators on loopback for the unit tier: real protocol peers, no mocks.

* ``RedfishEmulator``: ``sushy-emulator --fake`` (sushy-tools, the Redfish emulator
  Ironic's CI uses) with HTTP basic auth from an htpasswd file (bcrypt). Its fake
  driver applies power changes after a random delay of a few seconds.
* ``IpmiEmulator``: a pyghmi BMC (the server library virtualbmc is built on) with its
  power state and boot device in memory, in a process of its own; clients talk to it
  with ``ipmitool -I lanplus``. The process is spawned, never forked: a fork of this
  threaded test process inherited a lock held by another thread and the SIGTERM
  handler of provision's, so it never ended and held the whole test run at exit
  (multiprocessing joins its children then).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import bcrypt


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedfishEmulator:
    def __init__(self, tmp: Path, username: str = "admin", password: str = "s3cret",
                 systems: int = 1) -> None:
        self.tmp = tmp
        self.username, self.password = username, password
        self.system_count = systems
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "sushy-emulator.log"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RedfishEmulator:
        htpasswd = self.tmp / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{self.username}:{hashed}\n")
        config = self.tmp / "sushy.conf"
        fake = [{"uuid": f"00000000-0000-4000-8000-{i:012d}", "name": f"fake-{i}",
                 "power_state": "Off", "external_notifier": False, "nics": []}
                for i in range(1, self.system_count + 1)]
        config.write_text(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
                          f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}\n")
        emulator = Path(sys.executable).with_name("sushy-emulator")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(emulator), "--fake", "-i", "127.0.0.1", "-p", str(self.port),
                 "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.address}/redfish/v1/", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # 401: it answers
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.2)
        raise AssertionError(f"sushy-emulator did not answer: {self.log.read_text()}")

    def systems(self) -> list[str]:
        import base64

        req = urllib.request.Request(f"{self.address}/redfish/v1/Systems")
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            data = json.loads(resp.read())
        return [m["@odata.id"].rstrip("/").rsplit("/", 1)[-1] for m in data["Members"]]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


def _serve_ipmi(port: int, username: str, password: str, state: dict[str, str],
                ready: Any) -> None:
    from pyghmi.ipmi import bmc

    class MemoryBmc(bmc.Bmc):
        def get_power_state(self) -> str:
            return state["power"]

        def power_on(self) -> None:
            state["power"] = "on"

        def power_off(self) -> None:
            state["power"] = "off"

        def power_reset(self) -> None:
            state["power"] = "on"

        def get_boot_device(self) -> str:
            return state["boot"]

        def set_boot_device(self, bootdevice: str) -> None:
            state["boot"] = bootdevice

    server = MemoryBmc({username: password}, port=port, address="127.0.0.1")  # bound
    ready.set()
    server.listen()


class IpmiEmulator:
    def __init__(self, username: str = "ADMIN", password: str = "ipmi-pass") -> None:
        self.username, self.password = username, password
        self.port = free_port(socket.SOCK_DGRAM)
        mp = multiprocessing.get_context("spawn")
        self.manager = mp.Manager()
        self.state = self.manager.dict({"power": "off", "boot": "default"})
        self.ready = mp.Event()
        self.proc = mp.Process(target=_serve_ipmi, daemon=True, args=(
            self.port, username, password, self.state, self.ready))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> IpmiEmulator:
        self.proc.start()
        if not self.ready.wait(timeout=60):  # a UDP server: nothing to connect to
            self.__exit__(None, None, None)
            raise AssertionError("the IPMI emulator did not bind its port within 60s")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.proc.terminate()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.manager.shutdown()
