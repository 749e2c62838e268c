"""The wheel, built from this checkout and used away from it.

The wheel is built from a clean copy of the checkout (no stale ``build/``, nothing
written into the checkout), installed into a fresh virtualenv (no system site
packages; dependencies from PyPI or pip's cache), and the installed ``provision``
console script is run from an empty working directory with its own state and cache
directories: nothing of the checkout may be needed. ``roles/``, ``pipelines/`` and
``images/`` must come from the wheel (``provision/data/<name>``, found by
``provision.paths.data_dir``) with their contents and executable bits.

Nothing is skipped: a missing tool fails with what to install. The virtualenv is
always removed. The build and install times are printed (``-s`` not needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DATA_DIRS = ("roles", "pipelines", "images")
BUILD_TIMEOUT = 900  # an isolated build fetches setuptools first
INSTALL_TIMEOUT = 1800  # every dependency, from PyPI when pip's cache is cold
CLI_TIMEOUT = 300
CLUSTER = f"pvwheel-{os.getpid()}"  # lab objects would be pv-pvwheel-<pid>[-<node>]

# Not part of a build: left out of the copy the wheel is built from.
_ROOT_SKIP = {".git", ".venv", "venv", "build", "dist", ".pytest_cache", ".mypy_cache",
              ".ruff_cache", ".tox", ".nox"}
# The environment variables that would let the checkout, or another venv, leak in.
_ENV_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PROVISION_INVENTORY",
             "PROVISION_STATE_DIR", "PROVISION_CACHE_DIR")


def _cache_junk(name: str) -> bool:
    return name == "__pycache__" or name.endswith((".pyc", ".pyo"))


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if _cache_junk(n)}
    if Path(directory).resolve() == REPO:
        skip |= {n for n in names
                 if n in _ROOT_SKIP or n.startswith(".venv") or n.endswith(".egg-info")}
    return skip


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"tests/lab/test_wheel.py needs {name!r} on PATH: {hint}", pytrace=False)
    return path


def _run(cmd: list[str], what: str, timeout: float, **kwargs: object
         ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not finish in {timeout} s: {' '.join(map(str, cmd))}\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}", pytrace=False)


def _must(proc: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, proc.args))}\n"
                    f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}", pytrace=False)
    return proc


def _tree(root: Path) -> dict[str, tuple[str, bool]]:
    """relative path -> (sha256, executable) of every file under root (symlinks followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _cache_junk(d)]
        for f in filenames:
            if _cache_junk(f):
                continue
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = (
                hashlib.sha256(p.read_bytes()).hexdigest(), bool(p.stat().st_mode & 0o111))
    return out


def _version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@dataclass
class Wheel:
    path: Path
    seconds: float


@dataclass
class Venv:
    root: Path
    python: Path
    provision: Path
    work: Path  # the working directory of every command: empty, outside the checkout
    state: Path
    cache: Path
    env: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run([str(self.provision), *args], f"provision {' '.join(args)}", timeout,
                    cwd=self.work, env=self.env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    """``pip wheel`` of a clean copy of the checkout (isolated build: the pinned
    setuptools from pyproject.toml, not whatever the running venv has)."""
    pip = _run([sys.executable, "-m", "pip", "--version"], "pip --version", 60)
    if pip.returncode != 0:
        pytest.fail(f"building the wheel needs pip in {sys.executable}: "
                    f"{pip.stderr.strip()}", pytrace=False)
    base = tmp_path_factory.mktemp("wheel")
    src, out = base / "src", base / "dist"
    shutil.copytree(REPO, src, symlinks=True, ignore=_ignore)
    try:
        started = time.monotonic()
        _must(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
                    str(src)], "pip wheel", BUILD_TIMEOUT, cwd=base,
                   env={k: v for k, v in os.environ.items() if k not in _ENV_DROP}),
              "building the wheel")
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(src, ignore_errors=True)
    wheels = sorted(out.glob("provision-*.whl"))
    assert len(wheels) == 1, f"expected one provision wheel in {out}, found {wheels}"
    return Wheel(wheels[0], seconds)


@pytest.fixture(scope="module")
def venv(wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh virtualenv (no system site packages) with the wheel installed; removed
    at the end whatever happens."""
    python3 = _tool("python3", "install Python >= 3.11 with venv (apt-get install python3-venv)")
    base = tmp_path_factory.mktemp("venv")
    root = base / "venv"
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    try:
        started = time.monotonic()
        _must(_run([python3, "-m", "venv", str(root)], "python3 -m venv", 300, env=env),
              "creating the virtualenv (python3 -m venv; Debian needs python3-venv)")
        created = time.monotonic() - started
        python = root / "bin" / "python"
        cfg = (root / "pyvenv.cfg").read_text()
        assert re.search(r"(?m)^include-system-site-packages\s*=\s*false", cfg), cfg
        env.update(PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                   PYTHONNOUSERSITE="1",
                   COLUMNS="1000",  # rich wraps at 80 otherwise: one message per line
                   NO_COLOR="1")
        started = time.monotonic()
        _must(_run([str(python), "-m", "pip", "install", "--quiet", str(wheel.path)],
                   "pip install", INSTALL_TIMEOUT, cwd=base, env=env),
              "installing the wheel and its dependencies (PyPI or pip's cache)")
        installed = time.monotonic() - started
        work, state, cache = base / "work", base / "state", base / "cache"
        for d in (work, state, cache):
            d.mkdir()
        env.update(PROVISION_STATE_DIR=str(state), PROVISION_CACHE_DIR=str(cache))
        provision = root / "bin" / "provision"
        assert provision.is_file(), f"the wheel installed no console script {provision}"
        yield Venv(root, python, provision, work, state, cache, env,
                   {"wheel build": wheel.seconds, "venv": created, "pip install": installed})
    finally:
        shutil.rmtree(root, ignore_errors=True)
        assert not root.exists(), f"could not remove the test virtualenv {root}"


def test_wheel_contents(wheel: Wheel) -> None:
    """Every file of provision/ and of the three data directories, nothing else, with
    the executable bits of the checkout (image recipes run and copy scripts)."""
    with zipfile.ZipFile(wheel.path) as z:
        infos = {i.filename: i for i in z.infolist() if not i.is_dir()}
        digests = {n: hashlib.sha256(z.read(n)).hexdigest() for n in infos}
    executable = {n: bool((i.external_attr >> 16) & 0o111) for n, i in infos.items()}

    stray = [n for n in infos if not n.startswith(("provision/", "provision-"))]
    assert not stray, f"files outside the package in the wheel: {stray}"

    counts = {}
    for name in DATA_DIRS:
        src = REPO / name
        links = [str(p.relative_to(REPO)) for p in src.rglob("*") if p.is_symlink()]
        assert not links, f"symlinks in {name}/ become copies in a wheel: {links}"
        want = _tree(src)
        assert want, f"{src} is empty or missing"
        prefix = f"provision/data/{name}/"
        got = {n[len(prefix):]: (digests[n], executable[n]) for n in infos
               if n.startswith(prefix)}
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        assert not missing and not extra, (
            f"{prefix} differs from {name}/: missing {missing}, extra {extra} (hidden files "
            f"are not matched by the package-data globs in pyproject.toml)")
        wrong = sorted(k for k in want if want[k] != got[k])
        assert not wrong, f"content or executable bit differs from {name}/: {wrong}"
        counts[name] = len(got)
    others = sorted(n for n in infos if n.startswith("provision/data/")
                    and n.split("/")[2] not in DATA_DIRS and n != "provision/data/README.md")
    assert not others, f"provision/data/ holds more than {DATA_DIRS}: {others}"

    # the package itself: modules and every package-data file (templates, locks, the
    # Go wrapper modules, the checks and their pytest.ini), and nothing stale
    want = {f"provision/{k}": v for k, v in _tree(REPO / "provision").items()}
    got = {n: (digests[n], executable[n]) for n in infos
           if (n.startswith("provision/") and not n.startswith("provision/data/"))
           or n == "provision/data/README.md"}
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    assert not missing, (f"files of provision/ missing from the wheel (add a package-data "
                         f"glob to pyproject.toml): {missing}")
    assert not extra, f"files in the wheel that the checkout does not have: {extra}"
    for pattern in ("provision/artifacts/locks/*.yaml", "provision/artifacts/gomod/*/go.mod",
                    "provision/checks/*.py", "provision/checks/pytest.ini",
                    "provision/report/templates/*.html.j2"):
        assert any(Path(n).match(pattern) for n in got), f"no {pattern} in the wheel"
    assert any(n.startswith("provision/providers/") and n.endswith(".j2") for n in got), (
        "no provider templates (provision/providers/**/*.j2) in the wheel")
    print(f"\n{wheel.path.name}: provision/ {len(got)} files, "
          + ", ".join(f"data/{k} {v}" for k, v in counts.items()))


def test_wheel_installs(venv: Venv, capsys: pytest.CaptureFixture[str],
                        record_property: Callable[[str, object], None]) -> None:
    with capsys.disabled():
        print("\n[test_wheel] " + ", ".join(f"{k}: {v:.1f} s" for k, v in venv.seconds.items()))
    for k, v in venv.seconds.items():
        record_property(k.replace(" ", "_") + "_seconds", round(v, 1))


DATA_DIR_PROBE = r"""
import hashlib, json, os, sys, sysconfig
import provision
from provision.paths import data_dir
def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, root)] = [digest, bool(os.stat(p).st_mode & 0o111)]
    return out
print(json.dumps({
    "provision": provision.__file__, "purelib": sysconfig.get_paths()["purelib"],
    "prefix": sys.prefix,
    "dirs": {n: {"path": str(data_dir(n)), "files": tree(data_dir(n))}
             for n in ("roles", "pipelines", "images")},
}))
"""


def test_data_dir_in_site_packages(venv: Venv) -> None:
    """data_dir() of the installed package resolves inside the venv's site-packages, and
    the roles, the pipelines and the image recipes are all there, byte for byte."""
    proc = _must(_run([str(venv.python), "-c", DATA_DIR_PROBE], "data_dir probe", 120,
                      cwd=venv.work, env=venv.env), "data_dir probe in the venv")
    found = json.loads(proc.stdout)
    purelib = Path(found["purelib"]).resolve()
    assert Path(found["prefix"]).resolve() == venv.root.resolve(), found["prefix"]
    assert purelib.is_relative_to(venv.root.resolve()), purelib
    assert Path(found["provision"]).resolve().is_relative_to(purelib), (
        f"provision imported from {found['provision']}, not from the venv's {purelib}")
    for name in DATA_DIRS:
        path = Path(found["dirs"][name]["path"]).resolve()
        assert path == purelib / "provision" / "data" / name, (
            f"data_dir({name!r}) -> {path}, not inside {purelib}/provision/data")
        got = {k: tuple(v) for k, v in found["dirs"][name]["files"].items()}
        want = _tree(REPO / name)
        assert got == want, (f"installed {name}/ differs from the checkout's: missing "
                             f"{sorted(want.keys() - got.keys())}, extra "
                             f"{sorted(got.keys() - want.keys())}, differing "
                             f"{sorted(k for k in want.keys() & got.keys() if want[k] != got[k])}")
    files = {n: found["dirs"][n]["files"] for n in DATA_DIRS}
    roles = {k.split("/")[0] for k in files["roles"] if k.endswith("defaults/main.yml")}
    assert roles == {d.name for d in (REPO / "roles").iterdir() if d.is_dir()}, roles
    assert "cluster.yaml" in files["pipelines"], sorted(files["pipelines"])
    recipes = {k.split("/")[0] for k in files["images"] if k.endswith("/recipe.toml")}
    assert recipes == {p.parent.name for p in (REPO / "images").glob("*/recipe.toml")}, recipes
    assert "netcheck/main.go" in files["images"], sorted(files["images"])


def test_version(venv: Venv) -> None:
    proc = _must(venv.cli("--version"), "provision --version")
    assert proc.stdout.strip() == f"provision {_version()}", proc.stdout


def test_validate(venv: Venv) -> None:
    inv = venv.work / "local.yaml"
    shutil.copyfile(REPO / "inventories" / "local.yaml", inv)
    proc = _must(venv.cli("validate", "-i", str(inv)), "provision validate")
    assert f"{inv}: valid" in proc.stdout, proc.stdout + proc.stderr


def test_validate_broken(venv: Venv) -> None:
    """A version written as a number: exit 2 and file:line:col pointing at it."""
    text = (REPO / "inventories" / "local.yaml").read_text()
    lines = text.splitlines(keepends=True)
    idx = next((i for i, line in enumerate(lines) if re.match(r"\s+version: v\d", line)), None)
    assert idx is not None, "inventories/local.yaml has no kubernetes version line to break"
    lines[idx] = re.sub(r"version: v(\d+\.\d+)\.\d+", r"version: \1", lines[idx])
    bad = venv.work / "broken.yaml"
    bad.write_text("".join(lines))
    proc = venv.cli("validate", "-i", str(bad))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, wanted 2:\n{output}"
    where = re.findall(rf"{re.escape(str(bad))}:(\d+):(\d+):", output)
    assert where, f"no {bad}:line:col in:\n{output}"
    assert any(int(line) == idx + 1 for line, _col in where), (
        f"the error points at {where}, the broken line is {idx + 1}:\n{output}")


def test_schema(venv: Venv) -> None:
    proc = _must(venv.cli("schema"), "provision schema")
    schema = json.loads(proc.stdout)
    assert isinstance(schema, dict) and "properties" in schema, proc.stdout[:500]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lab_netns() -> list[str]:
    """This test's lab namespaces (pv-<cluster>, pv-<cluster>-<node>), from ip and
    from /run/netns."""
    ip = _tool("ip", "apt-get install iproute2")
    proc = _must(_run([ip, "netns", "list"], "ip netns list", 60), "ip netns list")
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    run_netns = Path("/run/netns")
    if run_netns.is_dir():
        names |= {p.name for p in run_netns.iterdir()}
    mine = f"pv-{CLUSTER}"
    return sorted(n for n in names if n == mine or n.startswith(mine + "-"))


def test_plan_creates_nothing(venv: Venv) -> None:
    """`plan` of a cluster that does not exist lists a machine to create for every
    node, exits 0 and makes nothing: no lab namespace, no machine in the state dir."""
    text = (REPO / "inventories" / "local.yaml").read_text()
    text, renamed = re.subn(r"(?m)^name: \S+", f"name: {CLUSTER}", text)
    text, ported = re.subn(r"apiForwardPort: \d+", f"apiForwardPort: {_free_port()}", text)
    assert (renamed, ported) == (1, 1), "inventories/local.yaml: no top-level name or " \
        "apiForwardPort to change"
    inv = venv.work / f"{CLUSTER}.yaml"
    inv.write_text(text)
    assert not _lab_netns(), f"lab namespaces of {CLUSTER} exist before the test"
    nodes = [n["name"] for n in json.loads(_must(venv.cli("validate", "-i", str(inv), "-o",
                                                          "json"), "validate -o json").stdout)
             ["nodes"]]
    assert nodes, "the inventory copy has no nodes"
    try:
        proc = venv.cli("plan", "-i", str(inv))
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
            pytest.fail(f"provision plan -i {inv}: exit {proc.returncode}, wanted 0:\n{tail}",
                        pytrace=False)
        creates = set()
        for line in proc.stdout.splitlines():
            words = re.findall(r"[\w.-]+", line)
            if any(w.startswith("create") for w in words):
                creates |= set(words) & set(nodes)
        assert creates == set(nodes), (
            f"plan does not create {sorted(set(nodes) - creates)}:\n{proc.stdout}")
    finally:
        leftover = _lab_netns()
        machines = sorted(str(p.relative_to(venv.state)) for d in venv.state.rglob("machines")
                          if d.is_dir() for p in d.iterdir())
        if leftover or machines:
            try:  # plan must not have made them; do not leave them behind either
                from provision.lab.cleanup import sweep

                sweep(CLUSTER)
            except Exception as exc:  # noqa: BLE001 - report, the assert below fails anyway
                leftover.append(f"(sweep failed: {exc!r})")
    assert not leftover, f"plan left lab namespaces behind: {leftover}"
    assert not machines, f"plan made machines in the state dir: {machines}"
