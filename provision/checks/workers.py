"""workers stage: every worker registered with the pinned kubelet version and Ready
(Ready needs the pod network: before the network stage only registration counts)."""

import json

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


def test_kubelet_posts_status(host, cluster):
    node = node_object(host, cluster["node"]["name"])
    ready = {c["type"]: c for c in node["status"]["conditions"]}["Ready"]
    # True once a CNI is installed; before that the kubelet reports the reason
    assert ready["status"] == "True" or "network" in ready.get("message", "").lower(), ready
