"""The inventory: example files, pool expansion, etcd membership, credentials, schema."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from provision.errors import BadInput
from provision.inventory import (
    Inventory,
    InventoryInvalid,
    check_inventory,
    inventory_json_schema,
    load_inventory,
    parse_inventory,
    resolve_credential,
    supported_kubernetes_versions,
)
from provision.inventory.credentials import CredentialUnavailable

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "inventories"
MINE = ("local", "ci", "static", "baremetal")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("inventory code must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def local_text(**replace: str) -> str:
    text = (EXAMPLES / "local.yaml").read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


# --- the example inventories ------------------------------------------------------


@pytest.mark.parametrize("name", MINE)
def test_example_is_valid(name: str) -> None:
    inv = load_inventory(EXAMPLES / f"{name}.yaml")
    assert isinstance(inv, Inventory)
    assert inv.source_path == (EXAMPLES / f"{name}.yaml").resolve()
    assert not [w for w in inv.warnings if w.severity == "error"]
    assert inv.kubernetes.version in supported_kubernetes_versions()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_inventory_is_valid(path: Path) -> None:
    load_inventory(path)


def test_local_is_the_default_lab_cluster() -> None:
    inv = load_inventory(EXAMPLES / "local.yaml")
    assert inv.name == "local"
    assert [(n.name, n.address) for n in inv.nodes] == [
        ("cp-1", "10.250.0.11"),
        ("cp-2", "10.250.0.12"),
        ("cp-3", "10.250.0.13"),
        ("worker-1", "10.250.0.21"),
        ("worker-2", "10.250.0.22"),
    ]
    assert {n.provider for n in inv.nodes} == {"local"}
    assert inv.node("cp-1").machine.cpus == 1
    assert inv.node("cp-1").machine.memory == "2Gi"
    assert inv.node("worker-2").machine.memory_bytes == 1536 * 2**20
    assert inv.control_plane.virtual_ip == "10.250.0.10"
    assert inv.control_plane.port == 6443
    assert inv.network.subnet == "10.250.0.0/24"
    assert inv.network.gateway == "10.250.0.1"  # default: the first address
    assert inv.kubernetes.version == "v1.37.2"
    assert inv.kubernetes.cni == "flannel"
    assert inv.kubernetes.cluster_domain == "cluster.local"
    assert inv.artifacts.source == "offline"
    assert inv.ssh.user == "root"
    assert inv.providers.local is not None
    assert inv.providers.local.image == "debian-12"
    assert inv.providers.local.api_forward_port == 16443
    assert inv.providers.configured() == ["local"]
    assert inv.warnings == []


def test_ci_is_one_control_plane_and_one_worker_with_a_warning() -> None:
    inv = load_inventory(EXAMPLES / "ci.yaml")
    assert inv.name == "ci"
    assert [n.name for n in inv.control_plane_nodes] == ["cp-1"]
    assert [n.name for n in inv.worker_nodes] == ["worker-1"]
    assert [w.severity for w in inv.warnings] == ["warning"]
    assert "single etcd member" in inv.warnings[0].message


def test_defaults_when_omitted() -> None:
    inv = load_inventory(EXAMPLES / "ci.yaml")
    assert inv.kubernetes.pod_cidr == "10.244.0.0/16"
    assert inv.kubernetes.service_cidr == "10.96.0.0/12"
    assert inv.etcd.placement == "control-plane"
    assert inv.ssh.private_key is None


def test_node_lookup() -> None:
    inv = load_inventory(EXAMPLES / "local.yaml")
    assert inv.node("worker-1").pool == "worker"
    assert inv.node("worker-1").index == 1
    assert inv.node("cp-2").pool is None
    with pytest.raises(KeyError, match="no node named 'cp-9'"):
        inv.node("cp-9")


# --- pools ------------------------------------------------------------------------


def test_pool_expansion_stable_names() -> None:
    two = parse_inventory(local_text())
    three = parse_inventory(local_text(**{"count: 2": "count: 3"}))
    workers2 = [(n.name, n.address) for n in two.nodes_with_role("worker")]
    workers3 = [(n.name, n.address) for n in three.nodes_with_role("worker")]
    assert workers2 == [("worker-1", "10.250.0.21"), ("worker-2", "10.250.0.22")]
    # raising the count adds the next number; it renames nothing
    assert workers3[:2] == workers2
    assert workers3[2] == ("worker-3", "10.250.0.23")
    # equal inputs give equal nodes
    assert two.nodes == parse_inventory(local_text()).nodes


def test_pool_count_lowered_removes_the_highest() -> None:
    one = parse_inventory(local_text(**{"count: 2": "count: 1"}))
    assert [n.name for n in one.worker_nodes] == ["worker-1"]
    zero = parse_inventory(local_text(**{"count: 2": "count: 0"}))
    assert zero.worker_nodes == []


def test_pool_nodes_take_the_template_macs_and_bmcs() -> None:
    inv = load_inventory(EXAMPLES / "baremetal.yaml")
    w2 = inv.node("worker-2")
    assert w2.address == "10.20.0.22"
    assert w2.mac == "0c:c4:7a:20:00:02"
    assert w2.bmc is not None and w2.bmc.address == "https://10.20.1.22"
    assert w2.machine.disk == "480Gi"
    assert w2.machine.disk_bytes == 480 * 2**30


# --- etcd membership --------------------------------------------------------------


def test_etcd_members_colocated() -> None:
    inv = load_inventory(EXAMPLES / "local.yaml")
    assert [n.name for n in inv.etcd_members] == ["cp-1", "cp-2", "cp-3"]
    # the effective roles say so too: stages that target `etcd` find these nodes
    assert inv.node("cp-1").roles == {"control-plane", "etcd"}
    assert inv.node("worker-1").roles == {"worker"}
    assert [n.name for n in inv.nodes_with_role("etcd")] == ["cp-1", "cp-2", "cp-3"]


def test_etcd_members_dedicated() -> None:
    inv = load_inventory(EXAMPLES / "static.yaml")
    assert inv.etcd.placement == "dedicated"
    assert [n.name for n in inv.etcd_members] == ["etcd-1", "etcd-2", "etcd-3"]
    assert inv.node("cp-1").roles == {"control-plane"}
    assert [n.name for n in inv.control_plane_nodes] == ["cp-1", "cp-2", "cp-3"]


# --- credentials ------------------------------------------------------------------


def test_credential_refs_are_never_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-bmc-value"
    monkeypatch.setenv("BMC_PASSWORD", secret)
    inv = load_inventory(EXAMPLES / "baremetal.yaml")
    cp1 = inv.node("cp-1")
    assert cp1.bmc is not None
    assert cp1.bmc.password == "env:BMC_PASSWORD"
    assert inv.node("cp-3").bmc.password == "file:/etc/provision/secrets/ipmi-cp-3"  # type: ignore[union-attr]
    dumped = inv.spec.model_dump_json() + "".join(n.model_dump_json() for n in inv.nodes)
    assert secret not in dumped
    assert secret not in repr(inv)
    # resolved only when asked for, at the moment of use
    assert resolve_credential(cp1.bmc.password) == secret


def test_resolve_credential_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    assert resolve_credential(f"file:{tmp_path / 'pw'}") == "from-a-file"
    assert resolve_credential("file:pw", base_dir=tmp_path) == "from-a-file"
    with pytest.raises(CredentialUnavailable):
        resolve_credential(f"file:{tmp_path / 'missing'}")


def test_resolve_credential_unset_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISION_TEST_UNSET", raising=False)
    with pytest.raises(CredentialUnavailable, match="PROVISION_TEST_UNSET is not set"):
        resolve_credential("env:PROVISION_TEST_UNSET")


def test_literal_password_is_not_echoed() -> None:
    text = (
        (EXAMPLES / "baremetal.yaml")
        .read_text()
        .replace("file:/etc/provision/secrets/ipmi-cp-3", "hunter2-literal")
    )
    with pytest.raises(InventoryInvalid) as caught:
        parse_inventory(text, "metal.yaml")
    assert "hunter2-literal" not in str(caught.value)
    [problem] = caught.value.errors
    assert problem.path == "nodes[2].bmc.password"


# --- problems ---------------------------------------------------------------------


def test_all_problems_at_once() -> None:
    text = local_text(
        **{
            "name: local": "name: Local",
            "virtualIP: 10.250.0.10": "virtualIP: 10.250.0.11",
            "memory: 1536Mi": "memory: 1.5G",
        }
    )
    with pytest.raises(InventoryInvalid) as caught:
        parse_inventory(text, "x.yaml")
    paths = [p.path for p in caught.value.errors]
    assert paths == ["name", "controlPlane.virtualIP", "pools[0].template.memory"]


def test_warnings_do_not_fail() -> None:
    cp1_end = "    machine: {cpus: 1, memory: 2Gi}\n  - name: cp-2"
    bmc = "    bmc: {type: ipmi, address: 10.9.9.9, username: u, password: env:X}\n"
    text = local_text(**{cp1_end: cp1_end.replace("  - name", bmc + "  - name")})
    inv = parse_inventory(text, "w.yaml")
    [warning] = inv.warnings
    assert warning.severity == "warning"
    assert warning.path == "nodes[0].bmc"
    assert str(warning).startswith("w.yaml:")
    assert ": warning: nodes[0].bmc: bmc is only used by the pxe provider" in str(warning)


def test_invalid_raises_bad_input_with_every_problem() -> None:
    spec, problems = check_inventory(local_text(**{"v1.37.2": "v1.0.0"}), "k.yaml")
    assert spec is not None  # the schema passed; the version check is semantic
    assert [p.path for p in problems] == ["kubernetes.version"]
    with pytest.raises(BadInput):
        parse_inventory(local_text(**{"v1.37.2": "v1.0.0"}), "k.yaml")


def test_missing_file() -> None:
    with pytest.raises(InventoryInvalid, match="cannot read the inventory"):
        load_inventory(EXAMPLES / "does-not-exist.yaml")


def test_problem_to_dict() -> None:
    _, problems = check_inventory("kind: Cluster\n", "p.yaml")
    d = problems[0].to_dict()
    assert set(d) == {"file", "line", "column", "path", "message", "hint", "severity"}
    json.dumps(d)


def test_supported_versions_fallback_or_artifacts() -> None:
    versions = supported_kubernetes_versions()
    assert versions and all(v.startswith("v") for v in versions)


# --- JSON Schema ------------------------------------------------------------------


def test_json_schema() -> None:
    schema = inventory_json_schema()
    json.dumps(schema)
    assert schema["title"] == "provision inventory"
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert {"apiVersion", "kind", "name", "kubernetes", "controlPlane", "nodes", "pools"} <= set(
        props
    )
    assert props["apiVersion"]["const"] == "provision.dev/v1alpha1"
    defs = schema["$defs"]
    assert "podCIDR" in defs["KubernetesSpec"]["properties"]
    assert defs["KubernetesSpec"]["properties"]["version"]["enum"] == list(
        supported_kubernetes_versions()
    )
    assert "firstAddress" in defs["PoolSpec"]["properties"]
    # every field carries help for editors
    for name, model in defs.items():
        for field, prop in model.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field} has no description"
    # a mutated copy does not leak into the next call
    schema["title"] = "changed"
    assert inventory_json_schema()["title"] == "provision inventory"


def test_yaml_anchors_and_extension_keys() -> None:
    text = """apiVersion: provision.dev/v1alpha1
kind: Cluster
name: lab
kubernetes: {version: v1.37.2}
controlPlane: {virtualIP: 10.250.0.10}
network: {subnet: 10.250.0.0/24}
providers: {local: {}}
x-cp: &cp {roles: [control-plane], provider: local, machine: {cpus: 1, memory: 2Gi}}
nodes:
  - {<<: *cp, name: cp-1, address: 10.250.0.11}
  - {<<: *cp, name: cp-2, address: 10.250.0.12}
  - {<<: *cp, name: cp-3, address: 10.250.0.13}
"""
    inv = parse_inventory(text, "anchors.yaml")
    assert [n.machine.memory for n in inv.control_plane_nodes] == ["2Gi"] * 3


def test_control_character_position() -> None:
    _, [problem] = check_inventory("apiVersion: x\nname: a\x01b\n", "c.yaml")
    assert (problem.line, problem.column) == (2, 8)
    assert "U+0001" in problem.message


def test_yaml_one_point_two_scalars() -> None:
    # YAML 1.2: a MAC is a string (no sexagesimal numbers), `no` is not a boolean
    text = local_text(
        **{"address: 10.250.0.11\n": "address: 10.250.0.11\n    mac: 52:54:00:00:00:11\n"}
    )
    assert parse_inventory(text).node("cp-1").mac == "52:54:00:00:00:11"


def test_docs_describe_every_field() -> None:
    docs = (ROOT / "docs" / "inventory.md").read_text()
    schema = inventory_json_schema()
    models = [schema, *schema["$defs"].values()]
    missing = {f for m in models for f in m.get("properties", {}) if f"`{f}`" not in docs}
    assert not missing, f"docs/inventory.md does not describe: {sorted(missing)}"


def test_inventory_credential_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text(
        local_text(**{"  user: root": "  user: root\n  privateKey: file:key"})
    )
    (tmp_path / "key").write_text("KEY\n")
    inv = load_inventory(tmp_path / "inv.yaml")
    assert inv.ssh.private_key == "file:key"
    assert inv.credential(inv.ssh.private_key) == "KEY"


def test_pxe_server_address_outside_subnet() -> None:
    text = (
        (EXAMPLES / "baremetal.yaml")
        .read_text()
        .replace("serverAddress: 10.20.0.2", "serverAddress: 10.30.0.2")
    )
    _, problems = check_inventory(text, "m.yaml")
    assert [(p.path, p.line) for p in problems] == [("providers.pxe.serverAddress", 33)]


def test_node_named_like_a_future_pool_node_warns() -> None:
    extra = "  - {name: worker-3, roles: [worker], provider: local, address: 10.250.0.40}\n"
    text = local_text(**{"\n# Pools:": "\n" + extra + "# Pools:"})
    inv = parse_inventory(text, "f.yaml")
    [warning] = inv.warnings
    assert warning.path == "nodes[3].name"
    assert "pool 'worker' will call its node 3" in warning.message
