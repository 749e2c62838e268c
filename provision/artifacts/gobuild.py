"""Go builds from the module proxy (or a warm module cache) at pinned releases.

Two ways a program is built, both with ``-trimpath``, ``CGO_ENABLED=0`` and fixed
ldflags so that the same inputs give byte-identical binaries (the lock checks that):

* ``wrapper``: a small main module kept in this repo (``gomod/<name>/go.mod``,
  ``go.sum``, ``tools.go``) that requires the upstream module and carries the
  ``replace`` lines it needs. Kubernetes is built this way: k8s.io/kubernetes' own
  go.mod replaces every k8s.io staging module with ``./staging/...``, which the
  published module zip does not contain, so we point each one at its published
  ``v0.<minor>.<patch>``.
* ``source``: the module's own source (from the module cache) copied to a scratch
  directory and built as the main module, so its own go.mod, go.sum, replace lines
  and vendor directory apply exactly as upstream's release build (CoreDNS, flannel,
  the flannel CNI plugin).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provision.artifacts.cache import Cache, go_root, recipe_key
from provision.artifacts.errors import ArtifactError, ToolchainMissing
from provision.report.progress import Say

GOMOD_DIR = Path(__file__).parent / "gomod"
MIN_GO = (1, 26)



@dataclass(frozen=True)
class GoProgram:
    """One `go build` invocation producing one or more binaries."""

    step: str  # cache step name, e.g. "kubernetes"
    strategy: str  # "wrapper" | "source"
    module: str  # upstream module path
    version: str  # upstream module version
    packages: tuple[tuple[str, str], ...]  # (binary name, import path or ./relative)
    ldflags: tuple[str, ...] = ()
    wrapper: str = ""  # gomod/<wrapper> for strategy "wrapper"
    mod_mode: str = "mod"  # -mod=mod | vendor
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # Source builds only: blank imports to drop from a file (backends whose
    # dependencies the module proxy does not serve), and modules to replace by an
    # empty local stub so loading the module graph never asks the proxy for them.
    drop_imports: tuple[tuple[str, str], ...] = ()
    stub_modules: tuple[str, ...] = ()

    def source_of(self, binary: str) -> str:
        pkg = dict(self.packages)[binary]
        if self.strategy == "wrapper" and pkg == ".":
            # our own small program (pause, crictl) kept in this repository
            where = f"repo:provision/artifacts/{Path(self.wrapper).name}"
            return where if self.module.startswith("provision.local/") else \
                f"{where} on {self.module}@{self.version}"
        if pkg == ".":
            pkg = self.module
        elif pkg.startswith("./"):
            pkg = self.module + pkg[1:]
        return f"go:{pkg}@{self.version}"


def go_env() -> dict[str, str]:
    root = go_root()
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(root / "mod"),
        GOCACHE=str(root / "build"),
        CGO_ENABLED="0",
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
        GOOS="linux",
        GOARCH="amd64",
    )
    env.pop("GOPATH", None)
    return env


def go_version() -> str:
    """`go1.26.8`; raises ToolchainMissing when go is absent or older than MIN_GO."""
    go = find_go()
    if go is None:
        raise ToolchainMissing(
            "the Go toolchain (`go`) is not on PATH; the offline artifact build compiles "
            f"Kubernetes from source and needs Go >= {MIN_GO[0]}.{MIN_GO[1]}. Install Go "
            "(https://go.dev/dl, or a distribution package of that version) and retry."
        )
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                             timeout=60, env=go_env(), check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolchainMissing(f"`{go} env GOVERSION` failed: {e}") from e
    m = re.match(r"go(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < MIN_GO:
        raise ToolchainMissing(
            f"Go {out or '(unknown)'} is too old: building Kubernetes needs Go >= "
            f"{MIN_GO[0]}.{MIN_GO[1]} (the go directive of k8s.io/kubernetes' go.mod)."
        )
    return out


def find_go() -> str | None:
    """`go` on PATH, else the official tarball's default location."""
    found = shutil.which("go")
    if found:
        return found
    return "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None


def go_binary() -> str:
    return find_go() or "go"


def _wrapper_files(wrapper: str) -> dict[str, str]:
    d = GOMOD_DIR / wrapper
    if not d.is_dir():
        raise ArtifactError(f"missing Go wrapper module {d}")
    return {p.name: p.read_text() for p in sorted(d.iterdir()) if p.is_file()}


def recipe(prog: GoProgram, goversion: str) -> dict:
    r = {
        "strategy": prog.strategy,
        "module": prog.module,
        "version": prog.version,
        "packages": list(prog.packages),
        "ldflags": list(prog.ldflags),
        "mod_mode": prog.mod_mode,
        "env": list(prog.extra_env),
        "drop_imports": list(prog.drop_imports),
        "stub_modules": list(prog.stub_modules),
        "go": goversion,
        "cgo": 0,
        "trimpath": True,
    }
    if prog.strategy == "wrapper":
        r["wrapper_files"] = recipe_key(_wrapper_files(prog.wrapper))
    return r


HEARTBEAT_SECONDS = 60


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path,
         still_running: Callable[[float], None] | None = None) -> None:
    """``cmd`` at low priority, output to ``log``; ``still_running(elapsed)`` is told
    every minute (a cold Kubernetes build is silent for half an hour)."""
    started = time.monotonic()
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], cwd=cwd, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    proc.wait(timeout=HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if still_running:
                        still_running(time.monotonic() - started)
        except BaseException:  # Ctrl-C: no orphaned compiler (as subprocess.run does)
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        if any("no space left on device" in line for line in tail):
            from provision.artifacts.errors import DiskFull

            raise DiskFull("no space left on device during `go build`; nothing was cached. "
                           f"Free space and rerun. Log: {log}")
        raise ArtifactError(f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}) in "
                            f"{cwd}:\n  " + "\n  ".join(tail) + f"\n  full log: {log}")


def exec_name(pkg: str) -> str:
    """The file name `go build -o DIR/` gives a package's binary: its last path
    element, or the one before a major-version suffix (go.etcd.io/etcd/etcdctl/v3 ->
    etcdctl), as cmd/go does."""
    parts = pkg.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[2-9][0-9]*", parts[-1]):
        return parts[-2]
    return parts[-1]


def _patch_source(prog: GoProgram, src: Path, env: dict[str, str], log: Path) -> None:
    for rel, imp in prog.drop_imports:
        f = src / rel
        lines = f.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if f'"{imp}"' not in ln]
        if len(kept) == len(lines):
            raise ArtifactError(f"{prog.module}@{prog.version}: {rel} no longer imports {imp}; "
                                "update the build recipe")
        f.write_text("".join(kept))
    for i, mod in enumerate(prog.stub_modules):
        stub = src / "_provision_stubs" / str(i)
        stub.mkdir(parents=True)
        (stub / "go.mod").write_text(f"module {mod}\n\ngo 1.20\n")
        _run([go_binary(), "mod", "edit", f"-replace={mod}=./_provision_stubs/{i}"], src, env,
             log)


def module_dir(module: str, version: str, env: dict[str, str], log: Path, cwd: Path) -> Path:
    """Download (or find in the module cache) a module's source; return its directory."""
    out = subprocess.run([go_binary(), "mod", "download", "-json", f"{module}@{version}"],
                         capture_output=True, text=True, env=env, cwd=cwd)
    try:
        info = json.loads(out.stdout)
    except ValueError:
        info = {}
    if out.returncode != 0 or "Dir" not in info:
        raise ArtifactError(
            f"cannot get Go module {module}@{version}: {info.get('Error') or out.stderr.strip()}"
            "\n  offline? the module cache under "
            f"{env['GOMODCACHE']} must be warm (copy it from a box that built this set), "
            "or GOPROXY must reach a module proxy / mirror."
        )
    with open(log, "a") as f:
        f.write(f"module {module}@{version} at {info['Dir']}\n")
    return Path(info["Dir"])


def build_program(prog: GoProgram, cache: Cache, goversion: str, progress: Say,
                  log_dir: Path) -> dict:
    """Build (or find in the cache) one program. Returns the step record."""
    key = recipe_key(recipe(prog, goversion))
    rec = cache.get_record("go-" + prog.step, key)
    if rec is not None:
        progress(f"{prog.step}: cached")
        return rec
    cache.check_space()
    env = go_env()
    env.update(dict(prog.extra_env))
    env["GOFLAGS"] = f"-mod={prog.mod_mode}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"go-{prog.step}-{prog.version}.log"
    log.write_text("")
    progress(f"{prog.step}: building {prog.module}@{prog.version} "
             f"({', '.join(b for b, _ in prog.packages)}); log {log}")
    with cache.workdir("go-" + prog.step) as work:
        src = work / "src"
        if prog.strategy == "wrapper":
            src.mkdir()
            for name, text in _wrapper_files(prog.wrapper).items():
                (src / name).write_text(text)
        else:
            mdir = module_dir(prog.module, prog.version, env, log, work)
            shutil.copytree(mdir, src, symlinks=True)
            for dirpath, _dirs, filenames in os.walk(src):
                os.chmod(dirpath, 0o755)
                for fn in filenames:
                    p = os.path.join(dirpath, fn)
                    if not os.path.islink(p):
                        os.chmod(p, 0o644)
            _patch_source(prog, src, env, log)
        out = work / "out"
        out.mkdir()
        cmd = [go_binary(), "build", "-trimpath", "-buildvcs=false"]
        if prog.ldflags:
            cmd += ["-ldflags", " ".join(prog.ldflags)]
        cmd += ["-o", str(out) + "/"]
        pkgs = [pkg for _name, pkg in prog.packages]
        if len(pkgs) == 1:
            cmd[-1] = str(out / prog.packages[0][0])
        cmd += pkgs
        _run(cmd, src, env, log, lambda elapsed: progress(
            f"{prog.step}: still building ({elapsed / 60:.0f} min so far; log {log})"))
        files: dict[str, dict[str, str]] = {}
        for name, pkg in prog.packages:
            built = out / (name if len(pkgs) == 1 else exec_name(pkg))
            if not built.is_file():
                raise ArtifactError(f"go build of {pkg} produced no {built.name}; log {log}")
            os.chmod(built, 0o755)
            files[name] = {"sha256": cache.put_file(built, move=True),
                           "source": prog.source_of(name), "version": prog.version}
    rec = {"step": prog.step, "go": goversion, "files": files}
    cache.put_record("go-" + prog.step, key, rec)
    progress(f"{prog.step}: built")
    return rec


# -- the programs of a release ----------------------------------------------------------

def kubernetes_ldflags(version: str, build_date: str) -> tuple[str, ...]:
    major, minor, _patch = version.lstrip("v").split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
            f"-X {pkg}.gitCommit=0000000000000000000000000000000000000000",
        ]
    return tuple(flags)


KUBERNETES_BINARIES = ("kubeadm", "kubelet", "kubectl", "kube-apiserver",
                       "kube-controller-manager", "kube-scheduler", "kube-proxy")


def programs(rel) -> list[GoProgram]:  # rel: versions.Release
    from provision.artifacts import versions as v

    return [
        GoProgram(
            step="kubernetes", strategy="wrapper", module="k8s.io/kubernetes",
            version=rel.kubernetes, wrapper=f"kubernetes-{rel.kubernetes}",
            packages=tuple((b, f"k8s.io/kubernetes/cmd/{b}") for b in KUBERNETES_BINARIES),
            ldflags=kubernetes_ldflags(rel.kubernetes, rel.build_date),
        ),
        GoProgram(
            step="coredns", strategy="source", module="github.com/coredns/coredns",
            version=rel.coredns, packages=(("coredns", "."),),
            ldflags=("-s", "-w", "-X github.com/coredns/coredns/coremain.GitCommit="
                     f"{rel.coredns}"),
        ),
        GoProgram(
            step="flannel", strategy="source", module="github.com/flannel-io/flannel",
            version=v.FLANNEL_VERSION, packages=(("flanneld", "."),),
            # Without two backends (clusters here use vxlan): tencentvpc, whose Tencent
            # Cloud SDK the module proxy does not serve, and udp, whose proxy is C code
            # (we build with CGO_ENABLED=0; upstream's udp backend is deprecated).
            drop_imports=(("main.go", "github.com/flannel-io/flannel/pkg/backend/tencentvpc"),
                          ("main.go", "github.com/flannel-io/flannel/pkg/backend/udp")),
            stub_modules=("github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common",
                          "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc"),
            ldflags=("-s", "-w",
                     f"-X github.com/flannel-io/flannel/pkg/version.Version={v.FLANNEL_VERSION}"),
        ),
        GoProgram(
            step="flannel-cni", strategy="source", module=v.FLANNEL_CNI_MODULE,
            version=v.FLANNEL_CNI_VERSION, packages=(("flannel", "./plugins/meta/flannel"),),
            # (module zips carry no vendor/ directory: dependencies come from the proxy)
            ldflags=("-s", "-w", "-X github.com/containernetworking/plugins/pkg/utils/"
                     f"buildversion.BuildVersion={v.FLANNEL_CNI_VERSION}"),
        ),
        GoProgram(
            # etcd's modules replace each other with ../<dir>, which published module
            # zips do not contain: a wrapper requires the three at one release instead.
            # The version printed comes from the source (api/v3/version); the git
            # commit is unknown from the proxy, so it is stamped as zeros like
            # Kubernetes' gitCommit.
            step="etcd", strategy="wrapper", module="go.etcd.io/etcd/server/v3",
            version=rel.etcd, wrapper=f"etcd-{rel.etcd}",
            packages=(("etcd", "go.etcd.io/etcd/server/v3"),
                      ("etcdctl", "go.etcd.io/etcd/etcdctl/v3"),
                      ("etcdutl", "go.etcd.io/etcd/etcdutl/v3")),
            ldflags=("-s", "-w", "-X go.etcd.io/etcd/api/v3/version.GitSHA=0000000"),
        ),
        GoProgram(
            step="pause", strategy="wrapper", module="provision.local/pause",
            version=PAUSE_VERSION_TAG, wrapper="../pause", packages=(("pause", "."),),
            ldflags=("-s", "-w", f"-X main.version={rel.pause}"),
        ),
        GoProgram(
            step="crictl", strategy="wrapper", module="k8s.io/cri-client",
            version=CRICTL_CRI_CLIENT, wrapper="../crictl", packages=(("crictl", "."),),
            ldflags=("-s", "-w", f"-X main.version={CRICTL_CRI_CLIENT}"),
        ),
    ]


PAUSE_VERSION_TAG = "provision-1"
# provision/artifacts/crictl is built on this CRI client (one for every release: CRI v1).
CRICTL_CRI_CLIENT = "v0.37.2"
