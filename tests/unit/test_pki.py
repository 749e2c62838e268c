"""provision.pki: the etcd CA and certificates made on the provisioner."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provision import pki as pki_mod
from provision.pki import ensure_etcd_pki

MEMBERS = [("cp-1", "10.250.0.11"), ("cp-2", "10.250.0.12"), ("cp-3", "10.250.0.13")]


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(ext.get_values_for_type(x509.DNSName)),
            {str(a) for a in ext.get_values_for_type(x509.IPAddress)})


def eku(cert):
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def verify_signed_by(cert, ca):
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                           ec.ECDSA(cert.signature_hash_algorithm))


@pytest.fixture
def made(tmp_path):
    return ensure_etcd_pki(tmp_path, MEMBERS)


def test_ca_is_a_ca(made):
    ca = load(made.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.subject == ca.issuer


def test_member_server_and_peer_names_and_addresses(made):
    ca = load(made.ca_cert)
    for name, address in MEMBERS:
        m = made.members[name]
        server, peer = load(m.server_cert), load(m.peer_cert)
        verify_signed_by(server, ca)
        verify_signed_by(peer, ca)
        assert sans(server) == ({name, "localhost"}, {address, "127.0.0.1", "::1"})
        assert sans(peer) == ({name}, {address})
        assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku(server)
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= eku(peer)


def test_client_certificates_are_client_only(made):
    ca = load(made.ca_cert)
    for cert_path in (made.apiserver_client_cert, made.operator_cert):
        cert = load(cert_path)
        verify_signed_by(cert, ca)
        assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_keys_are_0600_and_dir_0700(made, tmp_path):
    keys = list((tmp_path / "etcd").rglob("*.key"))
    assert len(keys) == 1 + 2 * len(MEMBERS) + 2
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((tmp_path / "etcd").stat().st_mode) == 0o700
    for crt in (tmp_path / "etcd").rglob("*.crt"):
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644


def test_second_call_changes_nothing(made, tmp_path):
    before = {p: p.read_bytes() for p in (tmp_path / "etcd").rglob("*") if p.is_file()}
    again = ensure_etcd_pki(tmp_path, MEMBERS)
    assert again.changed == []
    after = {p: p.read_bytes() for p in (tmp_path / "etcd").rglob("*") if p.is_file()}
    assert before == after


def test_new_member_reuses_ca_and_existing_members(made, tmp_path):
    ca_before = made.ca_cert.read_bytes()
    cp1_before = made.members["cp-1"].server_cert.read_bytes()
    grown = ensure_etcd_pki(tmp_path, [*MEMBERS, ("cp-4", "10.250.0.14")])
    assert grown.ca_cert.read_bytes() == ca_before
    assert grown.members["cp-1"].server_cert.read_bytes() == cp1_before
    assert set(grown.changed) == {grown.members["cp-4"].server_cert,
                                  grown.members["cp-4"].peer_cert}


def test_changed_address_reissues_with_the_same_key(made, tmp_path):
    key_before = made.members["cp-2"].server_key.read_bytes()
    moved = ensure_etcd_pki(tmp_path, [MEMBERS[0], ("cp-2", "10.250.0.42"), MEMBERS[2]])
    assert moved.members["cp-2"].server_cert in moved.changed
    assert "10.250.0.42" in sans(load(moved.members["cp-2"].server_cert))[1]
    assert moved.members["cp-2"].server_key.read_bytes() == key_before
    assert moved.members["cp-1"].server_cert not in moved.changed


def test_certificate_from_another_ca_is_replaced(made, tmp_path):
    other = ensure_etcd_pki(tmp_path / "other", MEMBERS)
    target = made.members["cp-3"].peer_cert
    target.write_bytes(other.members["cp-3"].peer_cert.read_bytes())
    fixed = ensure_etcd_pki(tmp_path, MEMBERS)
    assert fixed.changed == [target]
    verify_signed_by(load(target), load(made.ca_cert))


def test_expiring_certificate_is_renewed(made, tmp_path, monkeypatch):
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=pki_mod.LEAF_DAYS - 10)
    monkeypatch.setattr(pki_mod, "_now", lambda: later)
    renewed = ensure_etcd_pki(tmp_path, MEMBERS)
    # every leaf, never the CA
    assert made.ca_cert not in renewed.changed
    assert len(renewed.changed) == 2 * len(MEMBERS) + 2


def test_loose_key_mode_is_tightened(made):
    made.operator_key.chmod(0o644)
    ensure_etcd_pki(made.ca_cert.parent.parent, MEMBERS)
    assert stat.S_IMODE(made.operator_key.stat().st_mode) == 0o600


def test_cli_prints_paths_never_keys(tmp_path, capsys):
    assert pki_mod.main(["etcd", str(tmp_path), "cp-1=10.250.0.11"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["changed"] is True
    assert data["pki"]["members"]["cp-1"]["server_key"].endswith("members/cp-1/server.key")
    assert "PRIVATE KEY" not in out
    assert pki_mod.main(["etcd", str(tmp_path), "cp-1"]) == 2


def test_ipv6_member_address(tmp_path):
    made = ensure_etcd_pki(tmp_path, [("cp-1", "fd00::11")])
    _, ips = sans(load(made.members["cp-1"].peer_cert))
    assert ips == {str(ipaddress.ip_address("fd00::11"))}


def test_encryption_config_is_made_once_private_and_its_key_redacted(tmp_path, capsys):
    import base64

    import yaml

    from provision import secrets

    assert pki_mod.main(["encryption", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / pki_mod.ENCRYPTION_CONFIG
    assert json.loads(out) == {"changed": True, "path": str(path)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = yaml.safe_load(path.read_text())
    assert config["kind"] == "EncryptionConfiguration"
    (entry,) = config["resources"]
    assert entry["resources"] == ["secrets"]
    # secretbox first (what new writes use), identity last (Secrets written before)
    first, last = entry["providers"]
    assert last == {"identity": {}}
    (key,) = first["secretbox"]["keys"]
    assert key["name"] == "key1" and len(base64.b64decode(key["secret"])) == 32
    assert f"k8s:enc:secretbox:v1:{key['name']}:" == pki_mod.ENCRYPTION_PREFIX
    assert key["secret"] not in out and key["secret"] in secrets.known()
    # kept: a new key would leave every Secret in etcd unreadable
    before = path.read_bytes()
    assert pki_mod.main(["encryption", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert path.read_bytes() == before
    assert pki_mod.main(["encryption"]) == 2
