"""Inputs that cannot hurt the provisioner: every hostile inventory ends as problems
(exit 2, file:line:col) within a bounded time and memory, no message carries a
secret or a character a terminal would act on (the CLI side: test_cli.py), and no
value reaches Ansible as a template.

The bounds are measured in a child process (its own peak RSS, from wait4, and CPU
time), under an address-space limit so that a regression fails here instead of taking
the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from provision.errors import EXIT_BAD_INPUT
from provision.executors import ansible
from provision.inventory import InventoryInvalid, load_inventory
from provision.inventory.problems import Problem
from provision.inventory.types import MAC, CredentialRef, DNSLabel, KubernetesVersion, Size
from provision.paths import ClusterPaths

CORPUS = Path(__file__).parent / "inventories" / "invalid"
GOOD = Path(__file__).resolve().parents[2] / "inventories" / "local.yaml"
MAX_CPU_SECONDS = 2.0
MAX_RSS_BYTES = 300 * 1024 * 1024

# Hostile classes from the corpus (each file states its problem) ...
CORPUS_CLASSES = [
    "yaml-alias-bomb",
    "yaml-deep-nesting",
    "yaml-alias-deep",
    "yaml-tag",
    "yaml-huge-integer",
    "yaml-bad-date",
    "control-character-key",
    "name-trailing-newline",
    "credential-nul",
    "bmc-address-userinfo",
    "too-many-nodes",
]

# The child: loads each file, prints one JSON line per file. Its own work only: the
# imports are done before the clock starts.
CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression fails, no more
from provision.inventory import InventoryInvalid, load_inventory
path = sys.argv[1]
start = time.process_time()
try:
    load_inventory(path)
    result = {"exit": 0, "lines": []}
except InventoryInvalid as e:
    result = {"exit": e.exit_code, "lines": str(e).splitlines()}
result["cpu"] = time.process_time() - start
print(json.dumps(result))
"""


def _measure(path: Path) -> tuple[dict[str, Any], int]:
    """The child's result and its peak RSS in bytes (that one child's, from wait4)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
    assert proc.returncode == 0, out
    return json.loads(out.splitlines()[-1]), usage.ru_maxrss * 1024  # Linux: KiB


def _generated(tmp_path: Path) -> dict[str, Path]:
    """Hostile classes too big (or too silly) to keep in the repository."""
    base = GOOD.read_text()
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.write(base.encode())
        f.truncate(50 * 1024 * 1024)  # 50 MB (sparse): only the first 256 KiB are read
    bomb = "x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    unused = tmp_path / "unused-bomb.yaml"  # x- keys hold anchors: shared, never expanded
    unused.write_text(bomb + base)
    return {"file-50MB": huge, "unused-alias-bomb": unused}


def test_each_hostile_class_within_2s_and_300MB(tmp_path: Path) -> None:
    cases = {name: CORPUS / f"{name}.yaml" for name in CORPUS_CLASSES}
    cases.update(_generated(tmp_path))
    measured = {}
    for name, path in cases.items():
        result, rss = _measure(path)
        measured[name] = (round(result["cpu"], 3), rss // (1 << 20))
        assert result["cpu"] < MAX_CPU_SECONDS, (name, measured[name])
        assert rss < MAX_RSS_BYTES, (name, measured[name])
        if name == "unused-alias-bomb":
            assert result["exit"] == 0, result
            continue
        assert result["exit"] == EXIT_BAD_INPUT, (name, result)
        lines = result["lines"]
        assert lines and all(line.startswith(f"{path}:") for line in lines), lines
    print("cpu seconds, peak RSS MiB:", measured)


def test_a_50MB_file_is_refused_at_1_1(tmp_path: Path) -> None:
    path = _generated(tmp_path)["file-50MB"]
    with pytest.raises(InventoryInvalid) as caught:
        load_inventory(path)
    assert str(caught.value) == (
        f"{path}:1:1: error: <document>: the file is larger than 256 KiB (hint: an "
        "inventory of a thousand nodes takes about 200 KiB: use pools for many identical "
        "nodes)")


@pytest.mark.parametrize(("kind", "text"), [
    (DNSLabel, "cp-1\n"),
    (KubernetesVersion, "v1.37.2\n"),
    (CredentialRef, "env:BMC_PASSWORD\n"),
])
def test_patterns_match_the_whole_value(kind: object, text: str) -> None:
    # `re.match` with `$` accepts a trailing newline; the checks use fullmatch
    with pytest.raises(ValidationError):
        TypeAdapter(kind).validate_python(text)


@pytest.mark.parametrize(("kind", "text"), [(MAC, "52:54:00:12:34:56\n"), (Size, "2Gi\n")])
def test_normalized_values_lose_the_newline(kind: object, text: str) -> None:
    assert TypeAdapter(kind).validate_python(text) == text.strip()


def test_a_message_is_one_inert_line() -> None:
    p = Problem("in\x1b[2Jv.yaml", 1, 2, "nodes[0].\x1b]0;x\x07", "bad\nline \u202e", "fix\r")
    text = str(p)
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text and "\\n" in text and "\\u202e" in text
    assert json.dumps(p.to_dict()).count("\\\\x1b") == 2  # escaped in JSON output too


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(GOOD.read_text().replace("name: local", "name: " + "X" * 100_000, 1))
    with pytest.raises(InventoryInvalid) as caught:
        load_inventory(path)
    assert max(len(line) for line in str(caught.value).splitlines()) < 1000


@pytest.mark.parametrize(("name", "secret"), [
    ("bmc-address-userinfo", "hunter2"),
    ("bmc-env-ref", "1PASS"),
])
def test_credential_errors_never_repeat_the_value(name: str, secret: str) -> None:
    with pytest.raises(InventoryInvalid) as caught:
        load_inventory(CORPUS / f"{name}.yaml")
    assert caught.value.errors
    assert secret not in str(caught.value)
    assert secret not in json.dumps([p.to_dict() for p in caught.value.problems])


# --- what reaches Ansible ---------------------------------------------------------------

JINJA = "{{ lookup('pipe', 'id') }}"


def _inventory_with(tmp_path: Path, value: str) -> Path:
    return ansible.write_inventory(
        ClusterPaths(tmp_path / "c"),
        {"localhost": {"ansible_connection": "local",
                       "ansible_python_interpreter": sys.executable,
                       "node_roles": ["etcd"]}},
        {"etcd": ["localhost"]},
        {"provision_pki_dir": value, "provision_api_port": 6443,
         "provision_nodes": [{"name": value}]},
    )


def test_inventory_values_are_written_unsafe(tmp_path: Path) -> None:
    text = _inventory_with(tmp_path, f"/state/{JINJA}").read_text()
    assert "provision_pki_dir: !unsafe '/state/{{ lookup(''pipe'', ''id'') }}'" in text
    assert "- name: !unsafe '/state/{{" in text  # inside lists and mappings too
    assert "provision_api_port: 6443" in text  # numbers stay numbers
    assert "- !unsafe 'etcd'" in text


def test_ansible_prints_an_inventory_value_literally(tmp_path: Path) -> None:
    """On localhost only (connection local): the value is data, not a template."""
    inventory = _inventory_with(tmp_path, f"/state/{JINJA}")
    playbook = tmp_path / "play.yaml"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  vars:\n"
        "    derived: \"{{ provision_pki_dir }}/etcd\"\n"
        "  tasks:\n"
        "    - debug: {msg: \"[{{ provision_pki_dir }}]\"}\n"
        "    - debug: {msg: \"[{{ derived }}]\"}\n"
        "      when: \"'etcd' in node_roles\"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         str(playbook)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'"msg": "[/state/{JINJA}]"' in proc.stdout
    assert f'"msg": "[/state/{JINJA}/etcd]"' in proc.stdout
    assert "uid=" not in proc.stdout

