"""The cluster's etcd PKI and the key that encrypts Secrets at rest, made on the
provisioner (never on a node).

Layout under ``pki_dir/etcd``::

    ca.crt ca.key                                   the etcd CA (reused once made)
    members/<name>/server.crt server.key            client-facing TLS of a member
    members/<name>/peer.crt peer.key                member-to-member TLS
    apiserver-etcd-client.crt .key                  kube-apiserver's client identity
    operator.crt operator.key                       etcdctl for operators and checks

Every private key is written 0600 before any byte lands (``write_secret``).
``ensure_etcd_pki`` is idempotent: an existing certificate is kept while it is signed
by the current CA, carries exactly the names and addresses wanted and has more than
``RENEW_BEFORE`` left; otherwise it is re-issued (with its existing key). The CA is
never replaced while its files exist: replacing it would cut every member off.

``pki_dir/encryption-config.yaml`` is the API servers' EncryptionConfiguration: one
secretbox key (XSalsa20-Poly1305, 32 random bytes) for Secrets, made once and kept,
then identity so that Secrets written before encryption was on stay readable. Every
control-plane node gets the same file (roles/control_plane); an etcd snapshot then
holds Secrets encrypted, and restoring one needs this key (it stays in the state).

CLI (used by the etcd and control_plane roles through a local action)::

    python -m provision.pki etcd PKI_DIR NAME=ADDRESS [NAME=ADDRESS ...]
    python -m provision.pki encryption PKI_DIR
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provision.paths import private_dir, write_secret

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
SERVER = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
PEER = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]


@dataclass
class MemberPKI:
    server_cert: Path
    server_key: Path
    peer_cert: Path
    peer_key: Path


@dataclass
class EtcdPKI:
    ca_cert: Path
    ca_key: Path
    apiserver_client_cert: Path
    apiserver_client_key: Path
    operator_cert: Path
    operator_key: Path
    members: dict[str, MemberPKI] = field(default_factory=dict)
    changed: list[Path] = field(default_factory=list)  # certificates (re)issued this call

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_or_make_key(path: Path) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            path.chmod(0o600)
            return key, False
    key = ec.generate_private_key(ec.SECP256R1())
    write_secret(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return key, True


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    tmp.replace(path)


def _ensure_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    cert_path, key_path = d / "ca.crt", d / "ca.key"
    if cert_path.exists() and key_path.exists():
        key, _ = _load_or_make_key(key_path)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key, False
    key, _ = _load_or_make_key(key_path)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd-ca")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_cert(cert_path, cert)
    return cert, key, True


def _sans(dns: list[str], ips: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns)]
    out += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ips)]
    return out


def _san_set(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)} | \
        {f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)}


def _wanted_set(dns: list[str], ips: list[str]) -> set[str]:
    return {f"DNS:{n}" for n in dns} | {f"IP:{ipaddress.ip_address(a)}" for a in ips}


def _still_good(cert_path: Path, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                cn: str, dns: list[str], ips: list[str], usages: list) -> bool:
    if not cert_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca_key = ca.public_key()
        hash_alg = cert.signature_hash_algorithm
        if not isinstance(ca_key, ec.EllipticCurvePublicKey) or hash_alg is None:
            return False  # our CA is always EC with a hashed signature: foreign, re-issue
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
    except Exception:  # noqa: BLE001 - unreadable or foreign: re-issue
        return False
    if cert.issuer != ca.subject:
        return False
    cert_key = cert.public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey) or \
            cert_key.public_numbers() != key.public_key().public_numbers():
        return False
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    if cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value != cn:
        return False
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return False
    return _san_set(cert) == _wanted_set(dns, ips) and set(eku) == set(usages)


def _ensure_leaf(cert_path: Path, key_path: Path, ca: x509.Certificate,
                 ca_key: ec.EllipticCurvePrivateKey, cn: str, dns: list[str], ips: list[str],
                 usages: list, org: str | None = None) -> bool:
    """Returns True when the certificate was (re)issued."""
    key, _ = _load_or_make_key(key_path)
    if _still_good(cert_path, key, ca, cn, dns, ips, usages):
        return False
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs)).issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=LEAF_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    sans = _sans(dns, ips)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_cert(cert_path, builder.sign(ca_key, hashes.SHA256()))
    return True


def ensure_etcd_pki(pki_dir: Path | str, members: list[tuple[str, str]]) -> EtcdPKI:
    """CA, per-member server and peer certificates, apiserver and operator clients."""
    d = Path(pki_dir) / "etcd"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    ca, ca_key, ca_new = _ensure_ca(d)
    pki = EtcdPKI(
        ca_cert=d / "ca.crt", ca_key=d / "ca.key",
        apiserver_client_cert=d / "apiserver-etcd-client.crt",
        apiserver_client_key=d / "apiserver-etcd-client.key",
        operator_cert=d / "operator.crt", operator_key=d / "operator.key",
    )
    if ca_new:
        pki.changed.append(pki.ca_cert)
    for name, address in members:
        m = d / "members" / name
        mp = MemberPKI(server_cert=m / "server.crt", server_key=m / "server.key",
                       peer_cert=m / "peer.crt", peer_key=m / "peer.key")
        if _ensure_leaf(mp.server_cert, mp.server_key, ca, ca_key, name,
                        [name, "localhost"], [address, "127.0.0.1", "::1"], SERVER):
            pki.changed.append(mp.server_cert)
        if _ensure_leaf(mp.peer_cert, mp.peer_key, ca, ca_key, name,
                        [name], [address], PEER):
            pki.changed.append(mp.peer_cert)
        pki.members[name] = mp
    if _ensure_leaf(pki.apiserver_client_cert, pki.apiserver_client_key, ca, ca_key,
                    "kube-apiserver-etcd-client", [], [], CLIENT):
        pki.changed.append(pki.apiserver_client_cert)
    if _ensure_leaf(pki.operator_cert, pki.operator_key, ca, ca_key,
                    "provision-operator", [], [], CLIENT):
        pki.changed.append(pki.operator_cert)
    return pki


ENCRYPTION_CONFIG = "encryption-config.yaml"
ENCRYPTION_PREFIX = "k8s:enc:secretbox:v1:key1:"  # how an encrypted Secret starts in etcd


def ensure_encryption_config(pki_dir: Path | str) -> tuple[Path, bool]:
    """The EncryptionConfiguration (made once, then kept: a new key would leave every
    Secret unreadable) and whether it was made now. The key goes into that file only:
    the CLI prints the path, and roles/control_plane copies the file with no_log."""
    path = private_dir(Path(pki_dir)) / ENCRYPTION_CONFIG
    if path.exists():
        return path, False
    key = base64.b64encode(os.urandom(32)).decode()
    write_secret(path, f"""\
# Managed by provision (provision/pki.py): Secrets encrypted at rest. Keep this key:
# without it no Secret in etcd, or in a snapshot of it, can be read.
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - secretbox:
          keys:
            - name: key1
              secret: {key}
      - identity: {{}}
""")
    return path, True


USAGE = ("usage: python -m provision.pki etcd PKI_DIR NAME=ADDRESS ...\n"
         "       python -m provision.pki encryption PKI_DIR")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "encryption":
        path, made = ensure_encryption_config(argv[1])
        print(json.dumps({"changed": made, "path": str(path)}))  # never the key
        return 0
    if len(argv) < 2 or argv[0] != "etcd":
        print(USAGE, file=sys.stderr)
        return 2
    members = []
    for item in argv[2:]:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            print(f"bad member {item!r}: want NAME=ADDRESS", file=sys.stderr)
            return 2
        members.append((name, address))
    pki = ensure_etcd_pki(argv[1], members)
    # Paths and what changed only: never key material.
    print(json.dumps({"changed": bool(pki.changed), "pki": pki.as_json()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
