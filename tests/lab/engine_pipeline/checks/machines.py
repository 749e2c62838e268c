def test_ssh_and_python(host):
    assert host.run("true").rc == 0
    assert host.exists("python3")
