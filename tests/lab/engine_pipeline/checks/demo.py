def test_demo_file(host):
    f = host.file("/etc/provision-demo")
    assert f.exists and f.content_string == "converged by provision\n"


def test_not_broken(host):
    assert not host.file("/etc/provision-demo-broken").exists, "the node is marked broken"
