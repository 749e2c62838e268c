"""Virtual machines through libvirt (libvirt-python): one domain per node.

Per node, in the inventory's storage pool and libvirt host:

    domain  pv-<cluster>-<node>             rendered from templates/domain.xml.j2
    volume  pv-<cluster>-<node>.qcow2       overlay whose backing file is the base image
    volume  pv-<cluster>-<node>-seed.iso    NoCloud seed: hostname, address, SSH keys
    console /var/log/libvirt/qemu/pv-<cluster>-<node>-console.log  (the serial port)

Shared by every VM made from one image (a cache, never removed by destroy):

    volumes pv-base-<recipe>-<hash>.qcow2 / .vmlinuz / .initrd   (direct kernel boot)

The VMs attach to an existing libvirt network (``providers.libvirt.network``), an
existing bridge (``bridge``), or by default to an isolated network ``pv-<cluster>``
that the provider creates with the subnet's gateway on its bridge and removes when the
cluster's last VM goes. When ``netns`` is set the network lives in that namespace of
this host (a lab), and SSH goes through ``provision.lab.nsproxy`` like lab machines.

A VM that exists is reused: a spec that changed in the inventory (CPUs, memory, disk,
image, MAC, address, network) is reported (``drift``), never applied. The domain's
metadata records the cluster, the node and the spec it was created with, so nothing
depends on local state: ``machines()`` finds a removed node's VM (and its address) on
the libvirt host itself. Every libvirt failure names the call that failed and the VM's
console log.

Modules: ``provider`` (``LibvirtProvider``, the lifecycle), ``connection``
(libvirt-python on first use, connections, lookups, call errors), ``checks`` (what
``validate`` finds), ``domain`` (names, spec, domain XML, metadata, drift, the seed),
``volumes`` (base image and per-VM volumes), ``network`` (the attachment and the owned
network), ``boot`` (waiting for SSH and the end of boot), ``cloudinit`` (seed ISOs),
``render`` (the XML templates).
"""

from provision.providers.libvirt.provider import LibvirtProvider

__all__ = ["LibvirtProvider"]
