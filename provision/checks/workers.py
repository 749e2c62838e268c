"""workers stage: every worker registered with the pinned kubelet version, its kubelet
heartbeating, and Ready (Ready needs the pod network: before the network stage is done
here, NotReady is accepted for that one reason)."""

import json
import time
from datetime import datetime

from provision import nodefacts


def node_object(host, name):
    out = host.run(f"kubectl --kubeconfig {nodefacts.KUBELET_KUBECONFIG} get node {name} -o json")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def test_kubelet_active(host):
    assert host.service("kubelet").is_running
    assert host.service("kubelet").is_enabled


def test_registered_with_pinned_version(host, cluster):
    node = node_object(host, cluster["node"]["name"])
    assert node["status"]["nodeInfo"]["kubeletVersion"] == cluster["provision_kubernetes_version"]


CNI_CONFIG = "/etc/cni/net.d/10-flannel.conflist"  # written by flannel (roles/cni)
LEASE_SLACK = 10  # seconds past the lease's duration before it counts as stale
LEASE_WAIT = 30  # seconds for a just-registered kubelet to make its Lease


def test_kubelet_renews_its_lease(host, cluster):
    """The kubelet heartbeats through its Lease (every 10 s by default): a stale lease
    is a kubelet that stopped talking to the API server."""
    get = (f"kubectl --kubeconfig {nodefacts.KUBELET_KUBECONFIG} -n kube-node-lease "
           f"get lease {cluster['node']['name']} -o json")
    # a kubelet that registered its Node moments ago makes its Lease right after
    deadline = time.monotonic() + LEASE_WAIT
    while (out := host.run(get)).rc != 0 and "NotFound" in out.stderr \
            and time.monotonic() < deadline:
        time.sleep(2)
    assert out.rc == 0, out.stderr
    spec = json.loads(out.stdout)["spec"]
    renewed = datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00")).timestamp()
    age = float(host.check_output("date +%s.%N")) - renewed
    assert age <= spec.get("leaseDurationSeconds", 40) + LEASE_SLACK, \
        f"the kubelet last renewed its lease {age:.0f} s ago"


READY_WAIT = 60  # seconds from a CNI configuration appearing to the kubelet's Ready


def test_ready_or_waiting_only_for_the_pod_network(host, cluster):
    """Ready; before the network stage has put a CNI configuration here, NotReady only
    for that reason. Once flannel has written its configuration (a worker joining a
    cluster that has a network) the kubelet turns Ready within seconds, and a kubelet
    that just started reports other reasons for a moment: waited for, bounded."""
    deadline = time.monotonic() + READY_WAIT
    while True:
        node = node_object(host, cluster["node"]["name"])
        ready = {c["type"]: c for c in node["status"]["conditions"]}["Ready"]
        if ready["status"] == "True":
            return
        cni = host.file(CNI_CONFIG).exists
        if "NetworkReady=false" in ready.get("message", "") and not cni:
            return  # waiting for the network stage, as it should
        # a stopped kubelet turns nothing Ready: no waiting (test_kubelet_active names it)
        assert host.service("kubelet").is_running, \
            f"NotReady, and the kubelet is not running: {ready}"
        assert time.monotonic() < deadline, \
            f"NotReady ({'with' if cni else 'without'} a CNI configuration): {ready}"
        time.sleep(3)


def test_kubelet_kubeadm_kubectl_are_the_pinned_files(host, files_not_as_pinned):
    wrong = files_not_as_pinned(host, ["bin/kubelet", "bin/kubeadm", "bin/kubectl"])
    assert not wrong, "; ".join(wrong)
