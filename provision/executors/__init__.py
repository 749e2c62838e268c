"""How provision acts on nodes: one SSH configuration, Ansible for convergence."""
