"""A writer through the API virtual IP, for HA tests: numbered writes every 100 ms,
each acknowledged or not, then read back.

Each write creates one ConfigMap ``<run>-<n>`` (labelled with the run) through the
cluster's written kubeconfig (the loopback forward to the VIP), over a new TLS
connection verified against the cluster CA, so every write is balanced again by
haproxy and none rides a connection to a dead server. A write is acknowledged when
the API server answered 201: etcd has committed it. Afterwards ``lost()`` lists the
acknowledged writes the cluster no longer has (must be none), and ``longest_gap``
is the longest time without an acknowledged write, counted from the fault.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

NAMESPACE = "default"
LABEL = "provision.test/writer"


@dataclass
class Write:
    n: int
    sent: float  # time.monotonic()
    acked: float | None = None
    error: str = ""


class ApiWriter(threading.Thread):
    def __init__(self, kubeconfig: Path, interval: float = 0.1, timeout: float = 2.0) -> None:
        super().__init__(daemon=True, name="api-writer")
        self.run_id = f"w{secrets.token_hex(3)}"
        self.interval, self.timeout = interval, timeout
        self.writes: list[Write] = []
        self.halt = threading.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="pv-writer-")
        self.server, self.context = self._client(kubeconfig, Path(self._tmp.name))

    @staticmethod
    def _client(kubeconfig: Path, tmp: Path) -> tuple[str, ssl.SSLContext]:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        files = {}
        for name, field in (("ca", cluster["certificate-authority-data"]),
                            ("cert", user["client-certificate-data"]),
                            ("key", user["client-key-data"])):
            path = tmp / name
            path.touch(mode=0o600)
            path.write_bytes(base64.b64decode(field))
            files[name] = str(path)
        context = ssl.create_default_context(cafile=files["ca"])  # verified, never -k
        context.load_cert_chain(files["cert"], files["key"])
        return cluster["server"], context

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.server}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self.context) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            write = Write(n, time.monotonic())
            self.writes.append(write)
            body = {"metadata": {"name": f"{self.run_id}-{n}",
                                 "labels": {LABEL: self.run_id}},
                    "data": {"n": str(n)}}
            try:
                status, answer = self._request(
                    "POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", body)
                if status == 201:
                    write.acked = time.monotonic()
                else:
                    write.error = f"HTTP {status}: {answer[:120]!r}"
            except Exception as exc:  # noqa: BLE001 - any failure is an unacknowledged write
                write.error = str(exc)
            self.halt.wait(max(0.0, write.sent + self.interval - time.monotonic()))

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def acked(self) -> list[Write]:
        return [w for w in self.writes if w.acked is not None]

    def longest_gap(self, since: float, until: float | None = None) -> float:
        """The longest time without an acknowledged write, from ``since`` (the fault,
        on time.monotonic()) to ``until`` (default: the last acknowledgement)."""
        times = sorted(w.acked for w in self.acked() if w.acked >= since)
        if until is not None:
            times.append(until)
        gaps, previous = [], since
        for t in times:
            gaps.append(t - previous)
            previous = t
        return max(gaps, default=float("inf"))

    def lost(self, attempts: int = 30) -> list[int]:
        """Numbers of acknowledged writes the cluster does not have (read back through
        the VIP, retried while the API is not answering)."""
        present = self.present(attempts)
        return [w.n for w in self.acked() if w.n not in present]

    def present(self, attempts: int = 30) -> set[int]:
        """Numbers of this writer's writes the cluster has (read back through the VIP,
        retried while the API is not answering)."""
        for _ in range(attempts):
            try:
                status, answer = self._request(
                    "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps"
                           f"?labelSelector={LABEL}%3D{self.run_id}")
            except Exception:  # noqa: BLE001 - retried below
                status = 0
            if status == 200:
                return {int(item["data"]["n"]) for item in json.loads(answer)["items"]}
            time.sleep(2)
        raise AssertionError("the written ConfigMaps could not be read back through the VIP")

    def summary(self, since: float) -> str:
        acked = self.acked()
        return (f"{len(self.writes)} writes, {len(acked)} acknowledged, longest gap from the "
                f"fault {self.longest_gap(since):.1f} s")

    def close(self) -> None:
        if self.is_alive():
            self.stop()
        self._tmp.cleanup()
