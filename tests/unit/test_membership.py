"""Applying a plan's membership actions (provision/membership.py), against a scripted
cluster: which commands run on which node, in which order, and how failures read.
Real clusters: tests/lab/test_cluster.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_planner import cluster, inventory_text, member_id

from provision import membership, planner
from provision.errors import StageFailed
from provision.inventory import load_inventory


class FakeProvider:
    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.released: list[str] = []

    def known_machines(self, inv):
        return dict(self.known)

    def observe(self, inv, nodes):
        names = [n if isinstance(n, str) else n.name for n in nodes]
        return {n: "running" if n in self.known else "missing" for n in names}

    def destroy(self, inv, nodes):
        for n in nodes:
            name = n if isinstance(n, str) else n.name
            self.released.append(name)
            self.known.pop(name, None)


class Recorder:
    """Stands in for the progress view and the run record."""

    def __init__(self, tmp: Path) -> None:
        self.lines: list[str] = []
        self.log = tmp / "run.log"

    def __getattr__(self, name):
        return lambda *a, **k: None

    def log_line(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """inventory (cps, workers) + machines; ssh.run_on_node scripted by ``answers``."""
    def make(cps=("cp-1", "cp-2", "cp-3"), workers=2, machines=(), answers=None):
        path = tmp_path / "inventory.yaml"
        path.write_text(inventory_text(cps=cps, workers=workers))
        inv = load_inventory(path)
        known = {n.name: str(n.address) for n in inv.nodes}
        known.update({m: f"10.250.0.{90 + i}" for i, m in enumerate(machines)})
        provider = FakeProvider(known)
        calls: list[tuple[str, str]] = []

        def run_on_node(paths, node, script, timeout=60):
            calls.append((node, script))
            for needle, rc in (answers or {}).items():
                if needle in script:
                    return subprocess.CompletedProcess([], rc, "", f"{needle} said no")
            return subprocess.CompletedProcess([], 0, "", "")

        resets: list[list[str]] = []
        monkeypatch.setattr(membership.ssh, "run_on_node", run_on_node)
        monkeypatch.setattr(membership.ssh, "close_masters", lambda *a: None)
        monkeypatch.setattr(membership.playbooks, "reset_hosts",
                            lambda engine, names, extra=None: resets.append(list(names)))
        monkeypatch.setattr(membership.time, "sleep", lambda s: None)
        record = Recorder(tmp_path)
        fake_cluster = SimpleNamespace(inv=inv, paths=SimpleNamespace(),
                                       provider=lambda name: provider)
        engine = SimpleNamespace(progress=record, record=record)
        return SimpleNamespace(inv=inv, provider=provider, calls=calls, resets=resets,
                               cluster=fake_cluster, engine=engine, record=record)
    return make


def scripts(w, node=None):
    return [s for n, s in w.calls if node in (None, n) and s != "true"]


def test_machines_of_removed_nodes_are_orphans(world):
    w = world(workers=1, machines=("worker-2", "worker-3"))
    assert set(membership.orphans(w.cluster)) == {"worker-2", "worker-3"}
    assert membership.cluster_machines(w.cluster)["worker-3"].address == "10.250.0.91"


def test_scale_in_drains_deletes_resets_and_releases_highest_first(world):
    w = world(workers=1, machines=("worker-2", "worker-3"))
    plan = planner.plan_changes(w.inv, cluster(workers=("worker-1", "worker-2", "worker-3")))
    assert plan.kinds() == [(planner.DRAIN_AND_REMOVE_WORKER, "worker-3"),
                            (planner.DRAIN_AND_REMOVE_WORKER, "worker-2")]
    m = membership.Membership(w.cluster, w.engine)
    assert m.before_pipeline(plan) == []
    assert m.after_pipeline(plan) == ["worker-3", "worker-2"]
    drains = [s for s in scripts(w, "cp-1") if "drain" in s]
    assert ["drain worker-3" in drains[0], "drain worker-2" in drains[1]] == [True, True]
    assert "--disable-eviction" not in drains[0] and "--timeout=300s" in drains[0]
    assert "delete node worker-3 --ignore-not-found" in drains[0]
    assert w.resets == [["worker-3"], ["worker-2"]]
    assert w.provider.released == ["worker-3", "worker-2"]


def test_force_drain_skips_the_eviction_api(world):
    w = world(workers=1, machines=("worker-2",))
    plan = planner.plan_changes(w.inv, cluster(workers=("worker-1", "worker-2")))
    membership.Membership(w.cluster, w.engine, force_drain=True).after_pipeline(plan)
    assert any("drain worker-2" in s and "--disable-eviction --force" in s for s in scripts(w))


def test_a_failed_drain_names_the_node_and_the_way_out(world):
    w = world(workers=1, machines=("worker-2",), answers={"drain worker-2": 1})
    plan = planner.plan_changes(w.inv, cluster(workers=("worker-1", "worker-2")))
    with pytest.raises(StageFailed) as err:
        membership.Membership(w.cluster, w.engine).after_pipeline(plan)
    assert err.value.node == "worker-2" and err.value.stage == "membership"
    assert "--force-drain" in err.value.what and "said no" in err.value.what
    assert w.provider.released == []  # nothing released after a failed drain


def test_replace_moves_the_vip_first_and_removes_the_member_after(world):
    w = world(cps=("cp-1", "cp-2", "cp-4"), workers=2, machines=("cp-3",))
    plan = planner.plan_changes(w.inv, cluster(vip="cp-3"))
    m = membership.Membership(w.cluster, w.engine)
    assert m.before_pipeline(plan) == ["cp-3"]
    assert scripts(w)[0] == "systemctl disable --now keepalived"
    assert "grep -qwF 10.250.0.10" in scripts(w)[1]  # another node answers on the VIP
    w.calls.clear()
    assert m.after_pipeline(plan) == ["cp-3"]
    done = scripts(w)
    order = [next(i for i, s in enumerate(done) if needle in s)
             for needle in ("keepalived", "drain cp-3", "member remove")]
    assert order == sorted(order)
    remove = next(s for s in done if "member remove" in s)
    assert "endpoint health" in remove.split("member remove")[0]  # others healthy first
    assert f"grep -q ^{member_id('cp-3')}," in remove  # already gone is fine
    assert "10.250.0.13" not in remove  # asks the members that stay
    assert w.resets == [["cp-3"]] and w.provider.released == ["cp-3"]


def test_vip_that_moves_nowhere_fails_with_the_node_and_what_to_check(world, monkeypatch):
    w = world(cps=("cp-1", "cp-2", "cp-4"), machines=("cp-3",), answers={"grep -qwF": 1})
    ticks = iter(range(0, 1000, 10))
    monkeypatch.setattr(membership.time, "monotonic", lambda: next(ticks))
    plan = planner.plan_changes(w.inv, cluster(vip="cp-3"))
    with pytest.raises(StageFailed, match="took the API virtual IP") as err:
        membership.Membership(w.cluster, w.engine).before_pipeline(plan)
    assert err.value.node == "cp-3" and "journalctl -u keepalived" in err.value.what


def test_a_lost_member_leaves_and_the_old_node_object_goes_before_the_stages(world):
    w = world()
    obs = cluster()
    obs.machines["cp-2"] = "missing"
    obs.reachable.discard("cp-2")
    w.provider.known.pop("cp-2")
    plan = planner.plan_changes(w.inv, obs)
    assert plan.kinds()[:2] == [(planner.REMOVE_ETCD_MEMBER, "cp-2"),
                                (planner.REPLACE_NODE, "cp-2")]
    m = membership.Membership(w.cluster, w.engine)
    assert m.before_pipeline(plan) == ["cp-2"]
    done = scripts(w)
    assert "member remove" in done[0] and "delete node cp-2 --ignore-not-found" in done[1]
    assert m.after_pipeline(plan) == []
