"""The stage engine end to end on real lab machines, real SSH, real Ansible, real testinfra.

One scenario, in order, because each step builds on the machines and markers the
previous one left: converge, skip on the second run, gate on a failed check, resume
after it, name the failing task, and a report whose timings match the log.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from provision.engine import Engine
from provision.errors import StageFailed
from provision.executors import ssh
from provision.lab.cleanup import leftovers, sweep
from provision.pipeline import load_pipeline
from provision.report import RunRecord
from provision.report.progress import Progress, Tee

pytestmark = pytest.mark.lab

HERE = Path(__file__).parent / "engine_pipeline"
MARKERS = "/var/lib/provision/stages"

INVENTORY = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: {name}
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: 10.252.0.10}}
network: {{subnet: 10.252.0.0/24}}
providers: {{local: {{}}}}
nodes:
  - {{name: cp-1, roles: [control-plane], provider: local, address: 10.252.0.11,
      machine: {{cpus: 1, memory: 512Mi}}}}
  - {{name: w-1, roles: [worker], provider: local, address: 10.252.0.21,
      machine: {{cpus: 1, memory: 512Mi}}}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two lab machines for the whole module, state in a temp dir; always destroyed."""
    from provision.operations import Cluster

    base = tmp_path_factory.mktemp("engine")
    path = base / "inventory.yaml"
    path.write_text(INVENTORY.format(name="pvtest-engine"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(base / "state"))
        cluster = Cluster(path)
        sweep("pvtest-engine")  # a crashed earlier run (another state dir) left these
        try:
            yield cluster
        finally:
            ssh.close_masters(cluster.paths, [n.name for n in cluster.inv.nodes])
            cluster.provider("local").destroy(cluster.inv, [n.name for n in cluster.inv.nodes])
            assert leftovers("pvtest-engine") == [], "destroy left something behind"


def run(cluster, until=None, nodes=()):
    """One engine run over the demo pipeline; returns (outcomes or error, record)."""
    record = RunRecord(cluster.paths.runs_dir, command="up", cluster=cluster.inv.name)
    progress = Tee(record, Progress())
    engine = Engine(cluster.inv, cluster.paths, record, progress, cluster.hooks(progress),
                    roles_dir=HERE / "roles", checks_dir=HERE / "checks")
    pipeline = load_pipeline("pipelines", directory=HERE)
    try:
        result = engine.run(pipeline.narrowed(until=until), nodes)
        record.finish("ok")
    except StageFailed as exc:
        record.finish("failed", str(exc))
        result = exc
    return result, record


def plan(cluster):
    from provision.operations import plan_actions

    engine = Engine(cluster.inv, cluster.paths, None, Progress(), cluster.hooks(Progress()),
                    roles_dir=HERE / "roles", checks_dir=HERE / "checks")
    return plan_actions(cluster, load_pipeline("pipelines", directory=HERE), engine)


def on(cluster, node, script):
    proc = ssh.run_on_node(cluster.paths, node, script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def by_stage(outcomes):
    return {o.stage: o for o in outcomes}


def test_engine_end_to_end(lab):
    cluster = lab
    cluster.paths.ensure()

    # 1. first run converges every stage on every node
    outcomes, record = run(cluster)
    assert not isinstance(outcomes, StageFailed), outcomes
    stages = by_stage(outcomes)
    assert sorted(stages["demo"].converged) == ["cp-1", "w-1"]
    assert stages["demo"].status == "changed"
    for node in ("cp-1", "w-1"):
        assert on(cluster, node, "cat /etc/provision-demo") == "converged by provision\n"
        assert len(on(cluster, node, f"cat {MARKERS}/demo").strip()) == 64

    # 2. second run: nothing to do, every role stage skipped on every node
    outcomes, record = run(cluster)
    stages = by_stage(outcomes)
    for name in ("demo", "after"):
        assert stages[name].converged == [], name
        assert sorted(stages[name].skipped) == ["cp-1", "w-1"], name
        assert stages[name].status == "skipped"
    report = json.loads(record.report_json.read_text())
    assert report["status"] == "ok"
    assert [a.action for a in plan(cluster)] == ["nothing"]

    # 3. gating: a node whose inputs changed converges, its check fails, the run stops
    on(cluster, "w-1", f"touch /etc/provision-demo-broken && rm -f {MARKERS}/demo "
                       "/etc/provision-demo-after")
    # plan observes the nodes (pyinfra) and says exactly what the next run will do
    assert [(a.action, a.node, a.stage) for a in plan(cluster)] == [
        ("converge", "w-1", "demo")]
    error, record = run(cluster)
    assert isinstance(error, StageFailed)
    assert (error.stage, error.node) == ("demo", "w-1")
    assert "test_not_broken" in error.what
    assert Path(error.log).exists()
    # the later stage never ran on the broken node
    assert on(cluster, "w-1", "test -e /etc/provision-demo-after && echo yes || echo no") == "no\n"
    report = json.loads(record.report_json.read_text())
    assert report["status"] == "failed"
    assert report["failure"]["node"] == "w-1" and report["failure"]["stage"] == "demo"

    # 4. resume: the cause is fixed; the next run picks up where it stopped
    on(cluster, "w-1", "rm -f /etc/provision-demo-broken")
    outcomes, record = run(cluster)
    assert not isinstance(outcomes, StageFailed), outcomes
    stages = by_stage(outcomes)
    assert sorted(stages["demo"].skipped) == ["cp-1", "w-1"]  # marker was written, checks pass
    assert stages["after"].converged == ["w-1"] and stages["after"].skipped == ["cp-1"]

    # 5. a failing task names the node, the stage, the task and the log file
    on(cluster, "cp-1", f"touch /etc/provision-demo-fail && rm -f {MARKERS}/demo")
    error, record = run(cluster, nodes=["cp-1"])
    assert isinstance(error, StageFailed)
    assert (error.stage, error.node) == ("demo", "cp-1")
    assert "stop here when asked to fail" in error.what
    assert "failure flag" in error.what
    assert Path(error.log).exists()
    on(cluster, "cp-1", "rm -f /etc/provision-demo-fail")

    # 6. the report's timings are the log's timings
    outcomes, record = run(cluster)
    assert not isinstance(outcomes, StageFailed), outcomes
    report = json.loads(record.report_json.read_text())
    log = record.log.read_text()
    checked = 0
    for stage in report["stages"]:
        for node in stage["nodes"]:
            if node.get("started") is None:
                continue
            pattern = (rf"\[{re.escape(stage['name'])}\] {re.escape(node['name'])}: "
                       rf"{node['status']} .*started={re.escape(repr(node['started']))} "
                       rf"finished={re.escape(repr(node['finished']))}")
            assert re.search(pattern, log), (stage["name"], node["name"])
            checked += 1
    assert checked >= 6
    assert record.report_html.exists()
    junit = list(record.junit_dir.glob("*.xml"))
    assert junit, "JUnit results are recorded"
    subprocess.run(["python3", "-c", "import xml.dom.minidom,sys;"
                    "[xml.dom.minidom.parse(p) for p in sys.argv[1:]]", *map(str, junit)],
                   check=True)
