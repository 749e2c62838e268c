"""Every kind of work on nodes, one small module each, all behind provision.run.step.Step:
stage.py (pipeline stages), membership.py (repairs, VIP moves, removals), reset.py,
etcd.py (backup, restore), verify.py (checks alone)."""
