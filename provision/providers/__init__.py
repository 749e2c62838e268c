"""Providers: what makes machines exist and answer SSH.

``base`` is the interface (``Provider`` with declared capabilities), ``registry`` maps
an inventory's ``provider:`` names to implementations and groups the providers of one
inventory (``Providers``). One package per kind of machine: ``local`` (lab machines,
systemd-nspawn), ``libvirt`` (VMs), ``static`` (existing hosts). Shared plumbing has
one home each: ``machine`` (known_hosts, the strict SSH login, waiting for SSH) and
``services`` (provisioner-side processes beside the machines).
"""
