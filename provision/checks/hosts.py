"""hosts stage: /etc/hosts names every node of the cluster."""


def test_hosts_file_names_every_node(host, cluster):
    hosts = host.file("/etc/hosts").content_string
    lines = {tuple(line.split()[:2]) for line in hosts.splitlines()
             if line.strip() and not line.startswith("#")}
    for n in cluster.nodes:
        assert (n["address"], n["name"]) in lines, f"{n['name']} missing from /etc/hosts"
