"""Membership steps (provision/run/steps/membership.py) applying a plan's actions,
against a scripted cluster: which commands and plays run on which node, in which
order, and how failures read. Real clusters: tests/lab/test_cluster.py."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from test_planner import cluster, inventory_text, member_id

from provision.errors import StageFailed
from provision.executors import ssh
from provision.inventory import Inventory, Node, Problem
from provision.plan import membership as planner
from provision.providers.base import (
    Capability,
    Machine,
    MachineState,
    NodeSay,
    Provider,
    SSHEndpoint,
)
from provision.providers.registry import Providers
from provision.report import RunRecord, Tee
from provision.run import plays
from provision.run.context import ClusterContext, Options, RunContext
from provision.run.step import run_steps
from provision.run.steps import membership
from provision.run.steps.membership import after_stages, before_stages


class FakeProvider(Provider):
    """Machines by name (unit tier only): what a provider holds, and what it released."""

    name = "local"
    capabilities = frozenset({Capability.CREATE})

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.released: list[str] = []

    def validate(self, inv: Inventory, nodes: Sequence[Node]) -> list[Problem]:
        return []

    def ensure(self, inv: Inventory, nodes: Sequence[Node], say: NodeSay) -> set[str]:
        return set()

    def machines(self, inv: Inventory) -> dict[str, Machine]:
        return {n: Machine(n, a, self.name) for n, a in self.known.items()}

    def observe(self, inv: Inventory, names: Sequence[str]) -> dict[str, MachineState]:
        return {n: MachineState.RUNNING if n in self.known else MachineState.MISSING
                for n in names}

    def destroy(self, inv: Inventory, names: Sequence[str]) -> None:
        for name in names:
            self.released.append(name)
            self.known.pop(name, None)

    def ssh_endpoint(self, inv: Inventory, name: str, address: str) -> SSHEndpoint:
        return SSHEndpoint(address)


class FakeProviders(Providers):
    def __init__(self, inv: Inventory, provider: FakeProvider) -> None:
        super().__init__(inv)
        self.fake = provider

    def get(self, name: str) -> Provider:
        return self.fake


@pytest.fixture
def world(tmp_path, monkeypatch):
    """inventory (cps, workers) + machines; SSH scripted by ``answers``; plays recorded."""
    def make(cps=("cp-1", "cp-2", "cp-3"), workers=2, machines=(), answers=None,
             force_drain=False):
        monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
        path = tmp_path / "inventory.yaml"
        path.write_text(inventory_text(cps=cps, workers=workers))
        base = ClusterContext.open(path, Options(force_drain=force_drain))
        known = {n.name: n.address for n in base.inventory.nodes}
        known.update({m: f"10.250.0.{90 + i}" for i, m in enumerate(machines)})
        provider = FakeProvider(known)
        base.providers = FakeProviders(base.inventory, provider)
        base.ssh.providers = base.providers
        calls: list[tuple[str, str]] = []
        played: list[SimpleNamespace] = []

        def run_on_node(paths, node, script, timeout=60):
            calls.append((node, script))
            for needle, rc in (answers or {}).items():
                if needle in script:
                    return subprocess.CompletedProcess([], rc, "", f"{needle} said no")
            return subprocess.CompletedProcess([], 0, "", "")

        def run_plays(ctx, name, plays_, extra_hosts=None):
            played.append(SimpleNamespace(name=name, plays=plays_, extra=extra_hosts or {}))

        monkeypatch.setattr(ssh, "run_on_node", run_on_node)
        monkeypatch.setattr(ssh, "close_masters", lambda *a: None)
        monkeypatch.setattr(ssh, "write_ssh_config", lambda *a, **k: None)
        monkeypatch.setattr(plays, "run_plays", run_plays)
        monkeypatch.setattr(membership.time, "sleep", lambda s: None)
        record = RunRecord(tmp_path / "runs", "up", cluster=base.inventory.name)
        ctx = RunContext.start(base, record, Tee(record))
        return SimpleNamespace(inv=base.inventory, provider=provider, calls=calls,
                               played=played, ctx=ctx, record=record)
    return make


def scripts(w, node=None):
    return [s for n, s in w.calls if node in (None, n) and s != "true"]


def resets(w):
    return [p.plays[0]["hosts"].split(",") for p in w.played if p.name == "reset"]


def member_removals(w):
    """(host asked, member id, endpoints asked) of every etcd member removal play."""
    out = []
    for p in w.played:
        for play in p.plays:
            tasks = play.get("tasks", [])
            if any(t.get("ansible.builtin.include_role", {}).get("tasks_from")
                   == "remove_member" for t in tasks):
                out.append((play["hosts"], play["vars"]["etcd_remove_member_id"],
                            play["vars"]["etcd_remove_endpoints"]))
    return out


def test_machines_of_removed_nodes_are_orphans(world):
    w = world(workers=1, machines=("worker-2", "worker-3"))
    assert set(w.ctx.providers.orphans()) == {"worker-2", "worker-3"}
    assert w.ctx.ssh.machines()["worker-3"].address == "10.250.0.91"


def test_scale_in_drains_deletes_resets_and_releases_highest_first(world):
    w = world(workers=1, machines=("worker-2", "worker-3"))
    plan = planner.plan_changes(w.inv, cluster(workers=("worker-1", "worker-2", "worker-3")))
    assert plan.kinds() == [(planner.DRAIN_AND_REMOVE_WORKER, "worker-3"),
                            (planner.DRAIN_AND_REMOVE_WORKER, "worker-2")]
    assert before_stages(plan) == []
    steps = after_stages(plan)
    # plan shows what apply does: the planner's own list of steps per action
    assert [c.action for c in steps[0].plan(w.ctx)][:3] == [
        "cordon", "drain (respects PodDisruptionBudgets)", "kubectl delete node"]
    outcomes = run_steps(w.ctx, steps)
    assert [o.changed for o in outcomes] == [["worker-3"], ["worker-2"]]
    drains = [s for s in scripts(w, "cp-1") if "drain" in s]
    assert ["drain worker-3" in drains[0], "drain worker-2" in drains[1]] == [True, True]
    assert "--disable-eviction" not in drains[0] and "--timeout=300s" in drains[0]
    assert "delete node worker-3 --ignore-not-found" in drains[0]
    assert resets(w) == [["worker-3"], ["worker-2"]]
    assert w.provider.released == ["worker-3", "worker-2"]


def test_force_drain_skips_the_eviction_api(world):
    w = world(workers=1, machines=("worker-2",), force_drain=True)
    plan = planner.plan_changes(w.inv, cluster(workers=("worker-1", "worker-2")))
    run_steps(w.ctx, after_stages(plan))
    assert any("drain worker-2" in s and "--disable-eviction --force" in s for s in scripts(w))


@pytest.mark.parametrize("failing", ["cordon", "drain"])
def test_a_failed_drain_never_deletes_the_node(world, tmp_path, failing):
    """The drain script as a shell runs it, with a kubectl that fails at ``failing``
    (a PodDisruptionBudget past the timeout, a session cut by a killed run): the
    script fails and the Node is not deleted with its pods."""
    w = world(workers=1, machines=("worker-2",))
    run_steps(w.ctx, after_stages(planner.plan_changes(
        w.inv, cluster(workers=("worker-1", "worker-2")))))
    (script,) = [s for s in scripts(w, "cp-1") if "drain worker-2" in s]
    stub = tmp_path / "bin"
    stub.mkdir()
    log = tmp_path / "kubectl.log"
    (stub / "kubectl").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n"
                                  f"case \"$*\" in *\" {failing} \"*) exit 1 ;; esac\n")
    (stub / "kubectl").chmod(0o755)
    proc = subprocess.run(["bash", "-c", script], env={"PATH": f"{stub}:/usr/bin:/bin"},
                          capture_output=True, text=True)
    calls = log.read_text()
    assert proc.returncode != 0 and f" {failing} worker-2" in calls
    assert "delete node" not in calls, calls


def test_a_failed_drain_names_the_node_and_the_way_out(world):
    w = world(workers=1, machines=("worker-2",), answers={"drain worker-2": 1})
    plan = planner.plan_changes(w.inv, cluster(workers=("worker-1", "worker-2")))
    with pytest.raises(StageFailed) as err:
        run_steps(w.ctx, after_stages(plan))
    assert err.value.node == "worker-2" and err.value.stage == "drain-and-remove-worker"
    assert "--force-drain" in err.value.what and "said no" in err.value.what
    assert w.provider.released == []  # nothing released after a failed drain


def test_replace_moves_the_vip_first_and_removes_the_member_after(world):
    w = world(cps=("cp-1", "cp-2", "cp-4"), workers=2, machines=("cp-3",))
    plan = planner.plan_changes(w.inv, cluster(vip="cp-3"))
    before = before_stages(plan)
    assert [(s.name, s.nodes(w.ctx)) for s in before] == [("move-vip", ["cp-3"])]
    run_steps(w.ctx, before)
    assert scripts(w)[0] == "systemctl disable --now keepalived"
    assert "grep -qwF 10.250.0.10" in scripts(w)[1]  # another node answers on the VIP
    w.calls.clear()
    after = after_stages(plan)
    assert [(s.name, s.nodes(w.ctx)) for s in after] == [("remove-control-plane", ["cp-3"])]
    run_steps(w.ctx, after)
    done = scripts(w)
    assert done.index("systemctl disable --now keepalived") < next(
        i for i, s in enumerate(done) if "drain cp-3" in s)
    # the member leaves through roles/etcd remove_member.yml, asked of a member that
    # stays, with the endpoints of the members that stay
    (asker, mid, endpoints), = member_removals(w)
    assert asker == "cp-1" and mid == member_id("cp-3")
    assert endpoints == ["https://10.250.0.11:2379", "https://10.250.0.12:2379",
                         "https://10.250.0.14:2379"]
    assert resets(w) == [["cp-3"]] and w.provider.released == ["cp-3"]


def test_vip_that_moves_nowhere_fails_with_the_node_and_what_to_check(world, monkeypatch):
    w = world(cps=("cp-1", "cp-2", "cp-4"), machines=("cp-3",), answers={"grep -qwF": 1})
    ticks = iter(range(0, 1000, 10))
    monkeypatch.setattr(membership.time, "monotonic", lambda: next(ticks))
    plan = planner.plan_changes(w.inv, cluster(vip="cp-3"))
    with pytest.raises(StageFailed, match="took the API virtual IP") as err:
        run_steps(w.ctx, before_stages(plan))
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
    before = before_stages(plan)
    assert [s.name for s in before] == ["remove-etcd-member", "replace-node"]
    run_steps(w.ctx, before)
    (asker, mid, endpoints), = member_removals(w)
    assert asker == "cp-1" and mid == member_id("cp-2")
    assert "https://10.250.0.12:2379" not in endpoints
    assert "delete node cp-2 --ignore-not-found" in scripts(w)[0]
    assert w.provider.released == []  # its machine was gone already
    assert after_stages(plan) == []
