"""Acting on a cluster: the typed context (context.py), the Step interface (step.py)
and the steps themselves (steps/), Ansible plays (plays.py), the stage checks runner
(verify.py), the artifact mirror (mirror.py), and what ``up`` runs (up.py)."""
