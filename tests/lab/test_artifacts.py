"""Lab tier: the artifact mirror served inside a network namespace, reached from another.

Namespaces ``pvart-<pid>-srv`` (nginx + docker-registry on 10.254.77.1) and
``pvart-<pid>-cli`` (a client on 10.254.77.2) joined by a veth pair; both are always
deleted. Uses the artifact set of the default release (a cold cache builds it first).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from provision.artifacts import build, versions
from provision.artifacts.serve import ArtifactServer

pytestmark = pytest.mark.lab

SERVER_IP, CLIENT_IP = "10.254.77.1", "10.254.77.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    # installed by `make deps` (HOST_PACKAGES): a missing one is a broken install
    for tool in ("ip", "nginx", "docker-registry", "curl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.fail(f"{tool} is missing: `make deps` installs it")
    pid = os.getpid()
    srv, cli = f"pvart-{pid}-srv", f"pvart-{pid}-cli"
    veth_s, veth_c = f"pva{pid % 100000}s", f"pva{pid % 100000}c"
    try:
        _ip("netns", "add", srv)
        _ip("netns", "add", cli)
        _ip("link", "add", veth_s, "type", "veth", "peer", "name", veth_c)
        _ip("link", "set", veth_s, "netns", srv)
        _ip("link", "set", veth_c, "netns", cli)
        for ns, dev, addr in ((srv, veth_s, SERVER_IP), (cli, veth_c, CLIENT_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield srv, cli
    finally:
        for ns in (srv, cli):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert veth_s not in links and veth_c not in links


@pytest.fixture(scope="module")
def served(namespaces):
    srv_ns, _cli = namespaces
    aset = build(versions.DEFAULT_KUBERNETES_VERSION)
    server = ArtifactServer(aset, SERVER_IP, netns=srv_ns)
    server.start()
    try:
        yield aset, server
    finally:
        procs = list(server._procs.values())
        server.stop()
        assert all(p.poll() is not None for p in procs), "a server process outlived stop()"
        assert not server.run_dir.exists()


def _client(cli_ns: str, *curl_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", cli_ns, "curl", "-sS", "--fail",
                           "--max-time", "60", "--noproxy", "*", *curl_args],
                          capture_output=True, timeout=120)


def test_apt_index_is_served(namespaces, served):
    _srv, cli = namespaces
    aset, server = served
    r = _client(cli, f"{server.mirror_url}/apt/Packages")
    assert r.returncode == 0, r.stderr
    packages = r.stdout.decode()
    for pkg in ("containerd", "etcd-server", "haproxy", "keepalived", "runc"):
        assert f"\nPackage: {pkg}\n" in "\n" + packages
    release = _client(cli, f"{server.mirror_url}/apt/Release").stdout.decode()
    assert hashlib.sha256(packages.encode()).hexdigest() in release
    # a .deb named in the index is there, byte for byte what the index says
    first = next(line.split(": ", 1)[1] for line in packages.splitlines()
                 if line.startswith("Filename: "))
    deb = _client(cli, f"{server.mirror_url}/apt/{first}")
    assert deb.returncode == 0 and deb.stdout[:8] == b"!<arch>\n"


def test_a_file_is_served(namespaces, served):
    _srv, cli = namespaces
    aset, server = served
    r = _client(cli, f"{server.mirror_url}/files/{aset.kubernetes}/bin/kubeadm")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == aset.binary("kubeadm").name
    sums = _client(cli, f"{server.mirror_url}/files/{aset.kubernetes}/SHA256SUMS").stdout.decode()
    assert f"{aset.binary('kubeadm').name}  bin/kubeadm" in sums


def test_image_manifests_are_served_under_upstream_names(namespaces, served):
    _srv, cli = namespaces
    aset, server = served
    rel = versions.release(aset.kubernetes)
    for ref in (f"registry.k8s.io/pause:{rel.pause}",
                f"registry.k8s.io/kube-apiserver:{aset.kubernetes}",
                f"ghcr.io/flannel-io/flannel:{versions.FLANNEL_VERSION}"):
        repo, tag = ref.rsplit(":", 1)
        r = _client(cli, "-D", "-", "-H",
                    "Accept: application/vnd.oci.image.manifest.v1+json",
                    f"http://{server.registry}/v2/{repo}/manifests/{tag}")
        assert r.returncode == 0, r.stderr
        head, _, body = r.stdout.decode().partition("\r\n\r\n")
        manifest = json.loads(body)
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert f"sha256:{aset.images[ref]}" in head  # Docker-Content-Digest
        assert hashlib.sha256(body.encode()).hexdigest() == aset.images[ref]


def test_the_registry_refuses_writes_from_the_nodes(namespaces, served):
    """Pushes and deletes from a node's side get distribution's refusal; the images
    are still there and unchanged."""
    _srv, cli = namespaces
    aset, server = served
    ref = f"registry.k8s.io/pause:{versions.release(aset.kubernetes).pause}"
    repo, tag = ref.rsplit(":", 1)
    registry = f"http://{server.registry}/v2/{repo}"
    for method, url in (("POST", f"{registry}/blobs/uploads/"),
                        ("PUT", f"{registry}/manifests/{tag}"),
                        ("DELETE", f"{registry}/manifests/sha256:{aset.images[ref]}")):
        r = subprocess.run(["ip", "netns", "exec", cli, "curl", "-sS", "--max-time", "30",
                            "--noproxy", "*", "-X", method, "-o", "-", "-w", "%{http_code}",
                            "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
                            "--data-binary", "{}", url],
                           capture_output=True, text=True, timeout=60)
        # distribution's read-only mode: 405 "Method not allowed" (a writable registry
        # answers 202 to the upload, 201 to the manifest, 202 to the delete)
        assert r.stdout[-3:] == "405", (method, url, r.stdout)
    r = _client(cli, "-D", "-", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                f"{registry}/manifests/{tag}")
    assert r.returncode == 0 and f"sha256:{aset.images[ref]}" in r.stdout.decode()


def test_crictl_pulls_through_the_mirror(namespaces, served, tmp_path):
    """containerd from the pinned Debian package, configured with the documented
    hosts.toml files, pulls upstream image names through the mirror; our crictl drives it."""
    import signal
    import time

    from provision.artifacts import debs
    from provision.artifacts.serve import MIRRORED_REGISTRIES, hosts_toml

    _srv, cli = namespaces
    aset, server = served
    root = tmp_path / "root"
    debs.extract([a.path for a in aset.artifacts if a.name in ("deb/containerd", "deb/runc")],
                 root)
    certs = tmp_path / "certs.d"
    for upstream in MIRRORED_REGISTRIES:
        (certs / upstream).mkdir(parents=True)
        (certs / upstream / "hosts.toml").write_text(hosts_toml(upstream, server.registry))
    sock = tmp_path / "run" / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path}/var"\nstate = "{tmp_path}/run"\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{certs}"\n')
    env = dict(os.environ, PATH=f"{root}/usr/bin:{root}/usr/sbin:{os.environ['PATH']}")
    with open(tmp_path / "containerd.log", "wb") as log:
        ctrd = subprocess.Popen(["ip", "netns", "exec", cli, f"{root}/usr/bin/containerd",
                                 "--config", str(config)], stdout=log, stderr=log, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        crictl = [str(aset.binary("crictl")), "-r", f"unix://{sock}"]
        rel = versions.release(aset.kubernetes)
        for ref in (f"registry.k8s.io/pause:{rel.pause}",
                    f"ghcr.io/flannel-io/flannel:{versions.FLANNEL_VERSION}"):
            r = subprocess.run(["ip", "netns", "exec", cli, *crictl, "pull", ref],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr + (tmp_path / "containerd.log").read_text()[-2000:]
        images = subprocess.run(["ip", "netns", "exec", cli, *crictl, "images"],
                                capture_output=True, text=True, timeout=60).stdout
        assert "registry.k8s.io/pause" in images and rel.pause in images
    finally:
        os.killpg(ctrd.pid, signal.SIGTERM)
        try:
            ctrd.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ctrd.pid, signal.SIGKILL)
            ctrd.wait(timeout=10)


def _etcd_debs_unpacked(aset, root):
    from provision.artifacts import debs

    debs.extract([a.path for a in aset.artifacts
                  if a.name in ("deb/etcd-server", "deb/etcd-client")], root)
    return root / "usr" / "bin"


def test_etcd_packages_carry_the_pinned_release(served, tmp_path):
    """Our etcd-server/etcd-client replace Debian's 3.4: the real version is stamped,
    kubeadm's minimum is met, the package ships no unit and creates the etcd user."""
    aset, server = served
    rel = versions.release(aset.kubernetes)
    bin_dir = _etcd_debs_unpacked(aset, tmp_path / "root")
    out = subprocess.run([bin_dir / "etcd", "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert f"etcd Version: {rel.etcd.lstrip('v')}\n" in out
    for tool in ("etcdctl", "etcdutl"):
        out = subprocess.run([bin_dir / tool, "version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert f"{tool} version: {rel.etcd.lstrip('v')}\n" in out
    kubeadm_min = tuple(int(x) for x in rel.min_external_etcd.split("-")[0].split("."))
    assert tuple(int(x) for x in rel.etcd.lstrip("v").split(".")) >= kubeadm_min
    server_deb = next(a.path for a in aset.artifacts if a.name == "deb/etcd-server")
    info = subprocess.run(["dpkg-deb", "--info", server_deb], capture_output=True, text=True,
                          check=True).stdout
    assert "Package: etcd-server" in info and "postinst" in info
    listing = subprocess.run(["dpkg-deb", "--contents", server_deb], capture_output=True,
                             text=True, check=True).stdout
    assert "./usr/bin/etcd\n" in listing and "systemd" not in listing


def test_etcd_runs_the_roles_tls_configuration(namespaces, served, tmp_path):
    """The etcd role's configuration template, rendered for one member, runs on our etcd
    with client and peer TLS; etcdctl in another namespace talks to it with the
    operator certificate, and a plain-HTTP client gets no answer."""
    import signal
    import sys
    import time
    from pathlib import Path

    import jinja2

    srv, cli = namespaces
    aset, _server = served
    bin_dir = _etcd_debs_unpacked(aset, tmp_path / "root")
    pki_dir = tmp_path / "pki"
    subprocess.run([sys.executable, "-m", "provision.pki", "etcd", str(pki_dir),
                    f"m1={SERVER_IP}"], check=True, capture_output=True, timeout=60)
    conf = tmp_path / "etc"
    (conf / "pki").mkdir(parents=True)
    etcd_pki = pki_dir / "etcd"
    for src, dest in (("ca.crt", "ca.crt"), ("members/m1/server.crt", "server.crt"),
                      ("members/m1/server.key", "server.key"),
                      ("members/m1/peer.crt", "peer.crt"), ("members/m1/peer.key", "peer.key")):
        shutil.copy(etcd_pki / src, conf / "pki" / dest)
    template = Path(__file__).resolve().parents[2] / "roles/etcd/templates/etcd.conf.yml.j2"
    (conf / "etcd.conf.yml").write_text(jinja2.Environment(
        undefined=jinja2.StrictUndefined).from_string(template.read_text()).render(
        etcd_name="m1", etcd_data_dir=str(tmp_path / "data"), etcd_address=SERVER_IP,
        etcd_client_port=2379, etcd_peer_port=2380,
        etcd_initial_cluster=f"m1=https://{SERVER_IP}:2380", etcd_initial_cluster_state="new",
        etcd_cluster_token="pvart-etcd", etcd_heartbeat_interval=250,
        etcd_election_timeout=2500, common_etcd_pki_dir=str(conf / "pki"),
        common_etcd_ca_cert=str(conf / "pki" / "ca.crt")))
    log = tmp_path / "etcd.log"
    with open(log, "wb") as f:
        etcd = subprocess.Popen(["ip", "netns", "exec", srv, bin_dir / "etcd", "--config-file",
                                 conf / "etcd.conf.yml"], stdout=f, stderr=f,
                                start_new_session=True)
    etcdctl = ["ip", "netns", "exec", cli, str(bin_dir / "etcdctl"),
               "--endpoints", f"https://{SERVER_IP}:2379", "--cacert", str(etcd_pki / "ca.crt"),
               "--cert", str(etcd_pki / "operator.crt"), "--key", str(etcd_pki / "operator.key"),
               "--dial-timeout", "3s", "--command-timeout", "5s"]
    try:
        deadline = time.monotonic() + 60
        while True:
            health = subprocess.run([*etcdctl, "endpoint", "health"], capture_output=True,
                                    text=True, timeout=30)
            if health.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health.returncode == 0, health.stderr + log.read_text()[-3000:]
        put = subprocess.run([*etcdctl, "put", "pv", "ok"], capture_output=True, text=True,
                             timeout=30)
        assert put.returncode == 0, put.stderr
        got = subprocess.run([*etcdctl, "get", "pv", "--print-value-only"],
                             capture_output=True, text=True, timeout=30)
        assert got.stdout.strip() == "ok"
        status = subprocess.run([*etcdctl, "endpoint", "status", "-w", "json"],
                                capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(status.stdout)[0]["Status"]["version"] == rel_etcd(aset)
        plain = _client(cli, f"http://{SERVER_IP}:2379/health")
        assert plain.returncode != 0 or b'"health":"true"' not in plain.stdout
    finally:
        os.killpg(etcd.pid, signal.SIGTERM)
        try:
            etcd.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(etcd.pid, signal.SIGKILL)
            etcd.wait(timeout=10)


def rel_etcd(aset) -> str:
    return versions.release(aset.kubernetes).etcd.lstrip("v")


# -- bad cases: a lock mismatch, no Go toolchain, a full disk ----------------------------

def test_build_refuses_an_artifact_the_lock_does_not_match(tmp_path):
    """Through build() on the (warm) cache: one pinned sha256 changed in a copy of the
    lock; the build fails naming the artifact, the lock file and both values, and
    leaves the lock file alone."""
    from provision.artifacts import locks
    from provision.artifacts.errors import ChecksumMismatch

    version = versions.DEFAULT_KUBERNETES_VERSION
    build(version)  # warm (or make warm) first: the mismatch is the only failure
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    real = locks.load(version)
    text = locks.lock_path(version).read_text()
    good = real.by_name()["kubeadm"].sha256
    (lock_dir / f"{version}.yaml").write_text(text.replace(good, "f" * 64))
    before = (lock_dir / f"{version}.yaml").read_text()
    with pytest.raises(ChecksumMismatch) as err:
        build(version, lock_dir=lock_dir)
    msg = str(err.value)
    assert "checksum mismatch for kubeadm" in msg and "f" * 64 in msg and good in msg
    assert str(lock_dir / f"{version}.yaml") in msg and "--update-lock" in msg
    assert (lock_dir / f"{version}.yaml").read_text() == before


def _without_go(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run cmd in a private mount namespace where /usr/local/go is an empty tmpfs (the
    official tarball's place, which gobuild.find_go also tries) and PATH has no go.
    The mount dies with the namespace."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    assert shutil.which("go", path=path) is None, "go is installed in a system directory"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs pvart-nogo /usr/local/go && exec "$@"', "sh",
                           *cmd], env={**env, "PATH": path}, capture_output=True, text=True,
                          timeout=600)


def test_a_cold_build_without_go_says_what_to_install(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    import sys

    cold = tmp_path / "cold-cache"
    r = _without_go([sys.executable, "-m", "provision.artifacts", "build"],
                    {**os.environ, "PROVISION_CACHE_DIR": str(cold)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the Go toolchain (`go`) is not on PATH" in r.stderr
    assert "Install Go (https://go.dev/dl" in r.stderr and "Go >= 1.26" in r.stderr
    assert not list((cold / "artifacts" / "steps").glob("*/*.json"))
    # ...while a warm cache needs no compiler at all
    warm = _without_go([sys.executable, "-m", "provision.artifacts", "build"],
                       dict(os.environ))
    assert warm.returncode == 0, warm.stderr[-2000:]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs for the artifact cache, unmounted whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "pvart-small",
                    str(mnt)], check=True, timeout=30)
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], timeout=60)
        assert not os.path.ismount(mnt)


def _leftovers(cache) -> list[str]:
    return [str(p.relative_to(cache.root)) for d in (cache.blobs, cache.steps, cache.tmp)
            if d.exists() for p in d.rglob("*") if p.is_file()]


def test_a_full_disk_stops_the_build_before_a_step(small_tmpfs):
    """The real build() on a 4 MiB cache: refused before the first Go step with how
    much is free and needed; nothing written."""
    from provision.artifacts.cache import Cache
    from provision.artifacts.errors import DiskFull

    cache = Cache(small_tmpfs / "artifacts")
    with pytest.raises(DiskFull, match=r"only \d+ MiB free under .*needs at least 2048 MiB"):
        build(versions.DEFAULT_KUBERNETES_VERSION, cache=cache, log_dir=small_tmpfs / "logs")
    assert _leftovers(cache) == []


def test_enospc_during_a_go_build_leaves_nothing_and_the_next_build_resumes(
        small_tmpfs, tmp_path):
    """The free-space floor lowered (min_free=0) so the step starts: `go build` of pause
    (1.6 MB) hits ENOSPC writing into the 4 MiB cache's work directory; DiskFull, no
    record, no blob, no work directory. With room (remount to 64 MiB) the same step
    completes and produces the locked binary."""
    from provision.artifacts import gobuild, locks
    from provision.artifacts.cache import Cache
    from provision.artifacts.errors import DiskFull

    rel = versions.release(versions.DEFAULT_KUBERNETES_VERSION)
    pause = next(p for p in gobuild.programs(rel) if p.step == "pause")
    goversion = gobuild.go_version()
    cache = Cache(small_tmpfs / "artifacts", min_free=0)
    cache.ensure()
    # fill the tmpfs to ~1 MiB free so the 1.6 MB binary cannot land
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (3 * 2**20 - 64 * 1024))
    with pytest.raises(DiskFull, match="no space left on device during `go build`"):
        gobuild.build_program(pause, cache, goversion, lambda _m: None, tmp_path / "logs")
    assert _leftovers(cache) == []
    assert "no space left on device" in (tmp_path / "logs").joinpath(
        f"go-pause-{pause.version}.log").read_text()

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True,
                   timeout=30)
    rec = gobuild.build_program(pause, cache, goversion, lambda _m: None, tmp_path / "logs")
    lock = locks.load(rel.kubernetes)
    assert lock is not None and goversion == lock.go
    assert rec["files"]["pause"]["sha256"] == lock.by_name()["pause"].sha256
    assert list(cache.tmp.iterdir()) == []


def test_enospc_while_storing_a_blob_leaves_no_half_file(small_tmpfs, tmp_path):
    from provision.artifacts.cache import Cache
    from provision.artifacts.errors import DiskFull

    cache = Cache(small_tmpfs / "artifacts")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(6 * 2**20))
    with pytest.raises(DiskFull, match="no space left on the device"):
        cache.put_file(big)
    assert _leftovers(cache) == []
    assert big.exists()  # the source is untouched
