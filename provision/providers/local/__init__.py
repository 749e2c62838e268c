"""Lab machines on this host: systemd-nspawn machines in network namespaces.

Per cluster: a lab namespace ``pv-<cluster>`` whose bridge ``br-lab`` holds the
gateway address. Per node: a namespace ``pv-<cluster>-<node>`` with ``eth0`` (a veth
whose peer is on br-lab), an overlay of the shared read-only node image with the
node's own writable layer, a plain directory for /var/lib/containerd, cgroup
sub-groups with the inventory's CPU and memory limits, and a detached nspawn booting
it. Everything a node owns on disk lives in ``<state>/clusters/<c>/machines/<node>/``:

    upper/ work/   the overlay's writable layer (the node's "disk") and workdir
    root/          the overlay mount nspawn boots
    containerd/    bound to /var/lib/containerd (overlayfs cannot hold containerd's)
    kubelet/       bound to /var/lib/kubelet (plain directory, as verified with a kubelet)
    node.json      what was created (names, address, image), so destroy never guesses
    nspawn.pid     console.log

"stopped" means only that directory is left: no mount, namespace, cgroup or process.

Modules: ``provider`` (``LocalProvider``, the lifecycle), ``layout`` (every name and
path of a node, node.json), ``pieces`` (assembling a machine before it boots and
taking it apart after it stops), ``forward`` (the API forwarder), ``host`` (the box's
inotify limits).
"""

from provision.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
