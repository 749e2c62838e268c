#!/usr/bin/env python3
"""Run the cluster roles stage by stage against lab machines, then the stage checks.

For developing roles without the engine. Machines come from the engine
(`provision up -i INV --until machines`), the artifacts from
`python -m provision.artifacts.serve --address GATEWAY --netns pv-<cluster>`.

    roles_lab.py INV stage os|runtime|etcd|api-lb|control-plane|workers|network|reset
    roles_lab.py INV check STAGE

Writes the same generated inventory the engine writes (provision.clustervars), so the
roles see exactly the contract variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from provision.verify import run_checks  # noqa: E402

from provision import clustervars  # noqa: E402
from provision.executors import ansible  # noqa: E402
from provision.inventory import load_inventory  # noqa: E402
from provision.paths import ClusterPaths  # noqa: E402
from provision.pipeline import load_pipeline  # noqa: E402


def setup(inv_path: str):
    inv = load_inventory(inv_path)
    paths = ClusterPaths.for_cluster(inv.name)
    gw = str(inv.network.gateway)
    services = {"mirror_url": f"http://{gw}:8080", "registry": f"{gw}:5000",
                "pki_dir": str(paths.pki_dir)}
    gvars = clustervars.global_vars(inv, services)
    inventory = ansible.write_inventory(
        paths, {n.name: clustervars.host_vars(n) for n in inv.nodes},
        clustervars.groups(inv), gvars)
    cfg = ansible.write_ansible_cfg(paths, REPO / "roles")
    return inv, paths, gvars, inventory, cfg


def stage_def(name: str):
    pipe = load_pipeline("cluster")
    for st in pipe.stages:
        if st.name == name:
            return st
    if name == "reset":
        return None
    raise SystemExit(f"no stage {name}")


def targets(inv, st) -> list[str]:
    if st is None:
        return [n.name for n in inv.nodes]
    if "all" in st.targets:
        return [n.name for n in inv.nodes]
    want = set(st.targets)
    return [n.name for n in inv.nodes if want & set(n.roles)]


def run_stage(inv_path: str, name: str) -> int:
    inv, paths, gvars, inventory, cfg = setup(inv_path)
    st = stage_def(name)
    roles = ["reset"] if st is None else list(st.roles)
    hosts = targets(inv, st)
    if os.environ.get("ROLES_LAB_LIMIT"):  # e.g. ROLES_LAB_LIMIT=w-1 for reset
        hosts = [h for h in hosts if h in os.environ["ROLES_LAB_LIMIT"].split(",")]
    play = {"name": f"stage {name}", "hosts": ",".join(hosts), "roles": roles}
    if st is not None and st.serial:
        play["serial"] = st.serial
    import yaml
    pb = ansible.ansible_dir(paths) / f"lab-{name}.yaml"
    pb.write_text(yaml.safe_dump([play], sort_keys=False))
    env = dict(os.environ, ANSIBLE_CONFIG=str(cfg), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_CALLBACK_RESULT_FORMAT="yaml")
    t0 = time.time()
    rc = subprocess.call([str(REPO / ".venv/bin/ansible-playbook"), "-i", str(inventory), str(pb)],
                         env=env, cwd=str(ansible.ansible_dir(paths)))
    print(f"== stage {name}: ansible rc={rc} in {time.time() - t0:.1f}s", flush=True)
    if rc == 0 and st is not None and st.verify:
        rc = check(inv_path, name)
    return rc


def check(inv_path: str, name: str) -> int:
    inv, paths, gvars, _, _ = setup(inv_path)
    st = stage_def(name)
    context = dict(gvars, stage=name)
    junit = Path("/tmp") / f"checks-{inv.name}-{name}.xml"
    t0 = time.time()
    res = run_checks(paths, st.verify, targets(inv, st), context, junit)
    for c in res.checks:
        line = f"  {c.outcome:7} {c.node:6} {c.name}"
        if c.outcome == "failed":
            line += "  -- " + c.message.splitlines()[0][:300] if c.message else ""
        print(line)
    print(f"== checks {name}: {len(res.checks)} results in {time.time() - t0:.1f}s"
          + (f"; ERROR {res.error}" if res.error else ""), flush=True)
    return 1 if res.error or res.failed_nodes() else 0


if __name__ == "__main__":
    inv_path, cmd, name = sys.argv[1:4]
    sys.exit(run_stage(inv_path, name) if cmd == "stage" else check(inv_path, name))
