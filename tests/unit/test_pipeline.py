from pathlib import Path

import pytest

from provision.errors import BadInput
from provision.pipeline import load_pipeline, parse_pipeline


def test_default_pipeline_order_and_contract():
    p = load_pipeline("cluster")
    assert p.names == ["machines", "os", "hosts", "runtime", "etcd", "api-lb",
                       "control-plane", "workers", "network"]
    assert p.stage("machines").provider_action == "ensure"
    assert p.stage("control-plane").serial == 1
    assert p.stage("etcd").targets == ("etcd",)
    # every role a stage names exists as an Ansible role, every check as a module
    root = Path(__file__).resolve().parents[2]
    for stage in p.stages:
        for role in stage.role_names:
            assert (root / "roles" / role / "tasks" / "main.yml").is_file(), role
        assert (root / "provision" / "checks" / f"{stage.verify}.py").is_file(), stage.verify


def test_narrowing():
    p = load_pipeline("cluster")
    assert [s.name for s in p.narrowed(until="etcd")] == ["machines", "os", "hosts", "runtime",
                                                         "etcd"]
    assert [s.name for s in p.narrowed(only="os")] == ["os"]
    with pytest.raises(BadInput, match="unknown stage 'nope'"):
        p.narrowed(until="nope")
    with pytest.raises(BadInput, match="cannot be combined"):
        p.narrowed(until="os", only="os")


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a", "converge": {"roles": ["x"]}, "requires": ["b"]}],
         "'b' must be an earlier stage"),
        ([{"name": "a", "converge": {}}], "exactly one of 'roles' or 'provider'"),
        ([{"name": "a", "converge": {"roles": ["x"]}, "targets": ["db"]}],
         "'db' is not a node role"),
        ([{"name": "a", "converge": {"roles": ["x"]}, "retries": 3}], "unknown keys"),
        ([{"name": "a", "converge": {"provider": "ensure", "prepare": ["x"]}}],
         "only a stage of roles can prepare"),
        ([{"name": "a", "converge": {"roles": ["x"], "prepare": ["x:tasks/p.yml"]}}],
         "expected 'role' or 'role:tasks_file'"),
    ],
)
def test_bad_pipelines(stages, message):
    with pytest.raises(BadInput, match=message):
        parse_pipeline({"stages": stages}, Path("p.yaml"))


def test_targets_node():
    p = load_pipeline("cluster")
    assert p.stage("workers").targets_node({"worker"})
    assert not p.stage("workers").targets_node({"control-plane"})
    assert p.stage("os").targets_node({"etcd"})


# --- what enters a stage's input hash (sees:) ----------------------------------------

def _hashes(tmp_path, workers: int) -> dict[str, str]:
    from test_planner import inventory_text

    from provision.inventory import load_inventory
    from provision.run.context import ClusterContext
    from provision.run.steps.stage import stage_hash

    path = tmp_path / f"inv-{workers}.yaml"
    path.write_text(inventory_text(workers=workers))
    ctx = ClusterContext.of(load_inventory(path))
    gvars = ctx.cluster_vars()
    cp1 = ctx.inventory.node("cp-1")
    return {s.name: stage_hash(ctx, s, cp1, gvars)
            for s in load_pipeline().stages if not s.provider_action}


def test_adding_a_worker_changes_only_the_stages_that_see_workers(tmp_path):
    before, after = _hashes(tmp_path, 2), _hashes(tmp_path, 3)
    changed = sorted(s for s in before if before[s] != after[s])
    # /etc/hosts lists every node; the rest of the OS baseline, etcd and the control
    # plane do not
    assert changed == ["hosts"]


def test_sees_names_known_groups_only(tmp_path):
    data = {"stages": [{"name": "a", "converge": {"roles": ["x"]}, "sees": ["masters"]}]}
    with pytest.raises(BadInput, match="sees"):
        parse_pipeline(data, tmp_path / "p.yaml")


def test_every_role_a_stage_runs_enters_its_hash():
    stage = load_pipeline().stage("control-plane")
    assert stage.role_names == ("kubelet", "control_plane")
    assert load_pipeline().stage("workers").role_names == ("kubelet", "worker")


def test_a_change_to_a_prepared_role_changes_the_stage_hash(tmp_path, monkeypatch):
    import shutil

    from test_planner import inventory_text

    from provision.paths import data_dir
    from provision.run.context import ClusterContext
    from provision.run.steps.stage import stage_hash

    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    roles = tmp_path / "roles"
    shutil.copytree(data_dir("roles"), roles)
    path = tmp_path / "inv.yaml"
    path.write_text(inventory_text(workers=1))
    ctx = ClusterContext.open(path)
    ctx.roles_dir = roles

    def cp_hash() -> str:
        return stage_hash(ctx, load_pipeline().stage("control-plane"),
                          ctx.inventory.node("cp-1"), ctx.cluster_vars())

    before = cp_hash()
    with (roles / "kubelet" / "defaults" / "main.yml").open("a") as f:
        f.write("kubelet_extra: 1\n")
    assert cp_hash() != before


def test_a_role_a_stage_depends_on_enters_its_hash(tmp_path, monkeypatch):
    """meta/main.yml dependencies are part of what a stage runs: a change to a shared
    role re-converges every stage whose roles depend on it."""
    import shutil

    from test_planner import inventory_text

    from provision.paths import data_dir
    from provision.run.context import ClusterContext
    from provision.run.steps.stage import role_closure, stage_hash

    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    roles = tmp_path / "roles"
    shutil.copytree(data_dir("roles"), roles)
    shared = roles / "shared_lib" / "defaults"
    shared.mkdir(parents=True)
    (shared / "main.yml").write_text("shared_value: 1\n")
    (roles / "hosts_file" / "meta" / "main.yml").write_text(
        "dependencies: [{role: shared_lib}]\n")
    assert role_closure(roles, ["hosts_file"]) == ["hosts_file", "shared_lib"]
    path = tmp_path / "inv.yaml"
    path.write_text(inventory_text(workers=1))
    ctx = ClusterContext.open(path)
    ctx.roles_dir = roles

    def hosts_hash() -> str:
        return stage_hash(ctx, load_pipeline().stage("hosts"), ctx.inventory.node("cp-1"),
                          ctx.cluster_vars())

    before = hosts_hash()
    (shared / "main.yml").write_text("shared_value: 2\n")
    assert hosts_hash() != before
