"""The network check's test image and the checks that use it: images/netcheck (Go),
provision.artifacts.netcheck (build + OCI image), roles/cni's netcheck manifest and the
pure parts of provision/checks/network.py (what each pod probes, how answers are judged).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jinja2
import pytest
import yaml

from provision.artifacts import gobuild, locks, netcheck, oci
from provision.artifacts.cache import Cache

ROOT = Path(__file__).resolve().parents[2]
CNI = ROOT / "roles" / "cni"


def _load_network_checks():
    name = "provision_checks_network_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "provision/checks/network.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


network = _load_network_checks()
DEFAULTS = yaml.safe_load((CNI / "defaults/main.yml").read_text())


# ---------------------------------------------------------------- names agree


def test_role_uses_the_image_the_artifacts_build():
    assert DEFAULTS["cni_netcheck_image"] == netcheck.IMAGE_REF
    assert DEFAULTS["cni_netcheck_namespace"] == network.NETCHECK_NS
    assert DEFAULTS["cni_netcheck_port"] == network.NETCHECK_PORT


def test_source_change_bumps_the_version():
    assert netcheck.source_digest() == netcheck.SOURCE_KEY, (
        "images/netcheck changed: bump netcheck.VERSION (and cni_netcheck_image), set "
        f"SOURCE_KEY = {netcheck.source_digest()!r}, rebuild with --update-lock")


@pytest.mark.parametrize("version", ["v1.37.2", "v1.36.3"])
def test_both_locks_pin_the_binary_and_the_image(version):
    lock = locks.load(version)
    assert lock is not None
    pinned = lock.by_name()
    assert pinned["netcheck"].kind == "binary"
    assert pinned["netcheck"].source == netcheck.SOURCE
    assert pinned[netcheck.IMAGE_REF].kind == "image"
    assert pinned[netcheck.IMAGE_REF].version == netcheck.VERSION
    other = locks.load("v1.36.3" if version == "v1.37.2" else "v1.37.2")
    assert other is not None
    assert {n: pinned[n].sha256 for n in ("netcheck", netcheck.IMAGE_REF)} == \
        {n: other.by_name()[n].sha256 for n in ("netcheck", netcheck.IMAGE_REF)}


def test_program_builds_our_source_static():
    prog = netcheck.program()
    assert (gobuild.GOMOD_DIR / prog.wrapper).resolve() == netcheck.SOURCE_DIR
    assert prog.source_of(netcheck.BINARY) == "repo:images/netcheck"
    assert f"-X main.version={netcheck.VERSION}" in prog.ldflags
    assert "module provision.local/netcheck" in (netcheck.SOURCE_DIR / "go.mod").read_text()
    # standard library only: no require lines, no go.sum
    assert "require" not in (netcheck.SOURCE_DIR / "go.mod").read_text()
    assert not (netcheck.SOURCE_DIR / "go.sum").exists()


# ---------------------------------------------------------------- the manifest


def render_manifest() -> list[dict]:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(CNI / "templates")),
                             undefined=jinja2.StrictUndefined)
    text = env.get_template("netcheck.yaml.j2").render(**DEFAULTS)
    return [d for d in yaml.safe_load_all(text) if d]


def test_manifest_runs_netcheck_on_every_node_unprivileged():
    docs = {d["kind"]: d for d in render_manifest()}
    assert set(docs) == {"Namespace", "DaemonSet", "Service"}
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]  # control-plane nodes too
    (c,) = pod["containers"]
    assert c["name"] == "netcheck"
    assert c["image"] == netcheck.IMAGE_REF
    assert c["args"] == ["serve", "-listen", f":{network.NETCHECK_PORT}"]
    assert {e["name"] for e in c["env"]} == {"POD_NAME", "NODE_NAME", "POD_IP"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    svc = docs["Service"]["spec"]
    assert svc["selector"] == {"app": "netcheck"}
    assert svc["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


# ---------------------------------------------------------------- the check's logic

PODS = [network.Pod("netcheck-a", "cp-1", "10.244.0.2"),
        network.Pod("netcheck-b", "worker-1", "10.244.3.2"),
        network.Pod("netcheck-c", "worker-2", "10.244.4.2")]


def pod_json(name, node, ip, phase="Running", ready="True"):
    return {"metadata": {"name": name}, "spec": {"nodeName": node},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": ready}]}}


def test_node_readiness():
    listing = {"items": [
        {"metadata": {"name": "cp-1"}, "status": {"conditions": [
            {"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "worker-1"}, "status": {"conditions": [
            {"type": "Ready", "status": "Unknown"}]}},
        {"metadata": {"name": "worker-2"}, "status": {}},
    ]}
    assert network.node_readiness(listing) == {"cp-1": True, "worker-1": False,
                                               "worker-2": False}


def test_running_pods_only_ready_ones():
    listing = {"items": [pod_json("netcheck-c", "worker-2", "10.244.4.2"),
                         pod_json("netcheck-a", "cp-1", "10.244.0.2"),
                         pod_json("netcheck-x", "cp-2", "10.244.1.2", ready="False"),
                         pod_json("netcheck-y", "cp-3", "", phase="Pending")]}
    assert network.running_pods(listing) == [PODS[0], PODS[2]]


def probes(source=PODS[0]):
    return network.probes_from(source, PODS, "10.96.0.50", "10.96.0.1", "cluster.local")


def test_probes_reach_every_other_node_the_service_and_dns():
    targets = [p.target for p in probes()]
    assert targets == [
        "get:http://10.244.3.2:8080/", "get:http://10.244.4.2:8080/",
        "get:http://10.96.0.50/", "get:http://netcheck.provision-netcheck/",
        "resolve:netcheck.provision-netcheck.svc.cluster.local",
        "resolve:kubernetes.default",
    ]
    by_target = {p.target: p for p in probes()}
    assert by_target["get:http://10.244.3.2:8080/"].node == "worker-1"
    assert by_target["get:http://10.96.0.50/"].any_node == {"cp-1", "worker-1", "worker-2"}
    assert by_target["resolve:kubernetes.default"].addrs == ("10.96.0.1",)
    # what fails at once, naming CoreDNS, when no CoreDNS replica is available
    assert [p.target for p in probes() if p.needs_dns] == targets[3:]


def test_sweep_runs_netcheck_in_the_source_pod():
    argv = network.sweep_argv(PODS[1], probes(PODS[1]))
    assert argv[:9] == ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "-n",
                        "provision-netcheck", "exec", "netcheck-b", "-c", "netcheck"]
    assert argv[9:12] == ["--", "/netcheck", "sweep"]
    assert "get:http://10.244.0.2:8080/" in argv and "get:http://10.244.3.2:8080/" not in argv


def answer(target, ok=True, **kw):
    return json.dumps({"target": target, "ok": ok, "attempts": 1, **kw})


def body(node):
    return json.dumps({"pod": "p", "node": node, "ip": "x"}) + "\n"


def good_answers(ps):
    lines = []
    for p in ps:
        if p.target.startswith("resolve:"):
            lines.append(answer(p.target, addrs=list(p.addrs)))
        else:
            lines.append(answer(p.target, status=200, body=body(p.node or "worker-2")))
    return "\n".join(lines) + "\n"


def test_judge_accepts_right_answers():
    ps = probes()
    assert network.judge(PODS[0], ps, 0, good_answers(ps), "") == []


def test_judge_names_source_target_and_error():
    ps = probes()
    lines = good_answers(ps).splitlines()
    lines[0] = answer(ps[0].target, ok=False, attempts=3,
                      error='Get "http://10.244.3.2:8080/": dial tcp 10.244.3.2:8080: i/o timeout')
    lines[1] = answer(ps[1].target, status=200, body=body("cp-1"))  # wrong pod answered
    lines[4] = answer(ps[4].target, addrs=["10.96.0.99"])
    failures = network.judge(PODS[0], ps, 1, "\n".join(lines), "")
    assert len(failures) == 3, failures
    assert failures[0].startswith(
        "from pod netcheck-a on cp-1 (10.244.0.2) to pod netcheck-b on worker-1 (10.244.3.2)")
    assert "i/o timeout (3 attempts)" in failures[0]
    assert "to pod netcheck-c on worker-2" in failures[1]
    assert "answered from node 'cp-1', expected 'worker-2'" in failures[1]
    assert "cluster DNS for netcheck.provision-netcheck.svc.cluster.local" in failures[2]
    assert "resolved to 10.96.0.99, expected 10.96.0.50" in failures[2]


def test_judge_reports_an_exec_that_never_ran():
    ps = probes()
    failures = network.judge(PODS[0], ps, 1, "", 'error: unable to upgrade connection')
    assert len(failures) == len(ps)
    assert all("from pod netcheck-a on cp-1" in f and "kubectl exec exit 1: error: unable "
               "to upgrade connection" in f for f in failures)


# ---------------------------------------------------------------- the real program


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """images/netcheck built by gobuild into a scratch artifact cache (the Go module and
    build caches are the usual warm ones)."""
    goversion = gobuild.go_version()  # make up installs Go: its absence is a failure
    root = tmp_path_factory.mktemp("artifacts")
    cache = Cache(root)
    rec = gobuild.build_program(netcheck.program(), cache, goversion, lambda _m: None,
                                root / "logs")
    return cache, rec["files"][netcheck.BINARY]["sha256"]


def test_build_matches_the_lock(built):
    cache, sha = built
    lock = locks.load("v1.37.2")
    assert lock is not None
    if lock.go != gobuild.go_version():
        pytest.skip(f"lock was made with {lock.go}")
    assert sha == lock.by_name()["netcheck"].sha256
    digest = netcheck.build_image(sha, cache, lambda _m: None)
    assert digest == lock.by_name()[netcheck.IMAGE_REF].sha256


def test_image_runs_netcheck_serve_as_nonroot(built, tmp_path):
    cache, sha = built
    digest = netcheck.build_image(sha, cache, lambda _m: None)
    manifest = oci.read_manifest(digest, cache)
    cfg = json.loads(cache.blob_path(manifest["config"]["digest"].split(":")[1]).read_text())
    assert cfg["config"]["Entrypoint"] == ["/netcheck"]
    assert cfg["config"]["Cmd"] == ["serve"]
    assert cfg["config"]["User"] == "65532:65532"
    (lay,) = manifest["layers"]
    with tarfile.open(cache.blob_path(lay["digest"].split(":")[1])) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["netcheck"].mode == 0o755 and names["netcheck"].size > 0
    assert {"etc/passwd", "etc/group", "etc/nsswitch.conf", "tmp"} <= set(names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(built):
    """``netcheck serve`` on a loopback port, stopped afterwards."""
    cache, sha = built
    binary = cache.blob_path(sha)
    port = _free_port()
    env = dict(os.environ, POD_NAME="netcheck-a", NODE_NAME="cp-1", POD_IP="127.0.0.1")
    proc = subprocess.Popen([str(binary), "serve", "-listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield binary, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_serve_get_and_resolve(server):
    binary, port = server
    out = subprocess.run([str(binary), "get", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"pod": "netcheck-a", "node": "cp-1", "ip": "127.0.0.1"}
    out = subprocess.run([str(binary), "resolve", "localhost"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "127.0.0.1" in out.stdout.split()
    out = subprocess.run([str(binary), "get", "-timeout", "1s", f"http://127.0.0.1:{port}/x/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0  # any path answers with the identity
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"netcheck {netcheck.VERSION}"


def test_sweep_output_is_what_judge_reads(server):
    binary, port = server
    closed = _free_port()
    source = network.Pod("netcheck-z", "worker-9", "127.0.0.9")
    ps = [network.Probe(f"get:http://127.0.0.1:{port}/", "the server", node="cp-1"),
          network.Probe(f"get:http://127.0.0.1:{closed}/", "a closed port", node="cp-2"),
          network.Probe("resolve:127.0.0.1", "an address literal", addrs=("127.0.0.1",))]
    out = subprocess.run([str(binary), "sweep", "-timeout", "1s", "-attempts", "2",
                          *(p.target for p in ps)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1  # one target failed
    failures = network.judge(source, ps, out.returncode, out.stdout, out.stderr)
    assert len(failures) == 1, failures
    assert failures[0].startswith("from pod netcheck-z on worker-9 (127.0.0.9) to a closed "
                                  "port: ")
    assert "connection refused (2 attempts)" in failures[0]
