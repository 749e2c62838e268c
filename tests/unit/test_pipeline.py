from pathlib import Path

import pytest

from provision.errors import BadInput
from provision.pipeline import load_pipeline, parse_pipeline


def test_default_pipeline_order_and_contract():
    p = load_pipeline("cluster")
    assert p.names == ["machines", "os", "runtime", "etcd", "api-lb", "control-plane",
                       "workers", "network"]
    assert p.stage("machines").provider_action == "ensure"
    assert p.stage("control-plane").serial == 1
    assert p.stage("etcd").targets == ("etcd",)
    # every role a stage names exists as an Ansible role, every check as a module
    root = Path(__file__).resolve().parents[2]
    for stage in p.stages:
        for role in stage.roles:
            assert (root / "roles" / role / "tasks" / "main.yml").is_file(), role
        assert (root / "provision" / "checks" / f"{stage.verify}.py").is_file(), stage.verify


def test_narrowing():
    p = load_pipeline("cluster")
    assert [s.name for s in p.narrowed(until="etcd")] == ["machines", "os", "runtime", "etcd"]
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
