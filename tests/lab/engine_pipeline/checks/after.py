def test_after_file(host):
    assert host.file("/etc/provision-demo-after").exists
