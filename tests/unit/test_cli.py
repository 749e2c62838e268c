"""The CLI's contract: --help everywhere, exit codes, JSON output for scripts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provision.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
COMMANDS = ["validate", "schema", "plan", "up", "verify", "status", "destroy", "ssh",
            "kubeconfig", "artifacts"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "provision", "--version"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("provision ")


def test_validate_good_inventory_json():
    result = runner.invoke(app, ["validate", "-i", str(ROOT / "inventories/local.yaml"),
                                 "--output", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["valid"] is True and data["cluster"] == "local"
    assert len(data["nodes"]) == 5


def test_validate_bad_inventory_exits_2_with_positions(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: provision.dev/v1alpha1\nkind: Cluster\nname: x\nnodez: []\n")
    result = runner.invoke(app, ["validate", "-i", str(bad), "--output", "json"])
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["problems"]
    unknown = [p for p in problems if p["path"] == "nodez"]
    assert unknown and unknown[0]["line"] == 4 and "did you mean" in str(unknown[0]).lower()


@pytest.mark.parametrize("command", ["up", "plan", "verify", "status"])
def test_bad_inventory_fails_before_touching_anything(command, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: provision.dev/v1alpha1\nkind: Cluster\nname: x\n")
    result = runner.invoke(app, [command, "-i", str(bad)])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", ["up", "plan"])
def test_online_mode_without_pinned_checksums_fails_before_touching_anything(
        command, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    result = runner.invoke(app, [command, "-i", str(ROOT / "inventories/static.yaml")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "pins no sha256 for kubeadm, kubelet, kubectl" in text
    assert "provision/artifacts/locks/v1.37.2.yaml" in text
    assert "pin-upstream --version v1.37.2" in text and "source: offline" in text
    assert not (tmp_path / "state").exists()


def test_a_cluster_without_a_mirror_host_fails_before_touching_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    inventory = tmp_path / "static.yaml"
    text = (ROOT / "inventories/static.yaml").read_text()
    inventory.write_text(text.replace("source: upstream", "source: offline"))
    result = runner.invoke(app, ["up", "-i", str(inventory)])
    assert result.exit_code == 2, result.output
    assert "no provider of this cluster can run the artifact mirror" in \
        " ".join(result.output.split())
    assert not (tmp_path / "state").exists()


def test_artifact_status_follows_the_inventory_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["artifacts", "status", "-i",
                                 str(ROOT / "inventories/static.yaml"), "--output", "json"])
    assert result.exit_code == 1, result.output  # an empty cache: everything missing
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["kubeadm"]["source"].startswith("https://dl.k8s.io/release/v1.37.2/")
    assert "kube-apiserver" not in rows and "etcd" in rows


def test_missing_inventory_file_is_bad_input(tmp_path):
    result = runner.invoke(app, ["validate", "-i", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2


def test_schema_is_json_schema():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema.get("type") == "object" and "properties" in schema


def test_destroy_refuses_without_yes_off_terminal():
    result = runner.invoke(app, ["destroy", "-i", str(ROOT / "inventories/local.yaml")],
                           input="")
    assert result.exit_code == 2


def test_destroy_refuses_wipe_with_keep_machines_before_reading_anything(tmp_path):
    result = runner.invoke(app, ["destroy", "-i", str(tmp_path / "never-read.yaml"), "--yes",
                                 "--wipe", "--keep-machines"])
    assert result.exit_code == 2
    assert "--wipe erases the machines --keep-machines keeps" in result.output


TAGGED = ROOT / "tests/unit/inventories/invalid/yaml-tag.yaml"


def test_problems_are_never_rewrapped():
    # CliRunner's stderr is no terminal, like a pipe or CI: rich wrapped at 80 columns
    result = runner.invoke(app, ["validate", "-i", str(TAGGED)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80, lines
    assert lines[0].startswith(f"{TAGGED}:5:7: error: ")


def test_invalid_inventory_through_any_command_is_one_problem_per_line():
    result = runner.invoke(app, ["plan", "-i", str(TAGGED)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{TAGGED}:5:7: error: <document>: ")


def test_error_text_is_neither_markup_nor_terminal_control(monkeypatch):
    from provision import commands
    from provision.errors import BadInput

    def refuse(*args, **kwargs):
        raise BadInput("no cluster [/bold] named \x1b[31mx :thumbs_up:")

    monkeypatch.setattr(commands, "plan", refuse)
    result = runner.invoke(app, ["plan", "-i", str(ROOT / "inventories/local.yaml")])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: no cluster [/bold] named \\x1b[31mx :thumbs_up:\n"
