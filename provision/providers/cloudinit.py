"""NoCloud seed ISOs: a VM's identity and access, read by cloud-init at first boot.

The seed carries ``meta-data`` (instance id, hostname), ``network-config`` (v2: the
node's static address on the NIC with the VM's MAC) and ``user-data`` (the cluster's
SSH public key for root and the VM's pre-generated ed25519 host key). Because
provision generates the host key, it writes the public half into the cluster's
``known_hosts`` before the VM boots: SSH is strict from the first connection.

The ISO is written with pycdlib (ISO 9660 + Joliet + Rock Ridge, volume label
``cidata``), never by shelling out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class HostKey:
    private_openssh: str  # PEM-armoured OpenSSH private key
    public: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls) -> HostKey:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        return cls(private, public)


@dataclass(frozen=True)
class Seed:
    instance_id: str
    hostname: str
    mac: str
    address: str  # 10.0.0.5
    prefix: int  # 24
    gateway: str | None
    authorized_key: str  # the cluster's public key (one line)
    host_key: HostKey
    nameservers: tuple[str, ...] = ()

    def meta_data(self) -> str:
        return _yaml({"instance-id": self.instance_id, "local-hostname": self.hostname})

    def network_config(self) -> str:
        eth: dict[str, object] = {
            "match": {"macaddress": self.mac},
            "addresses": [f"{self.address}/{self.prefix}"],
            "dhcp4": False,
            "dhcp6": False,
        }
        if self.gateway:
            eth["routes"] = [{"to": "0.0.0.0/0", "via": self.gateway}]
        if self.nameservers:
            eth["nameservers"] = {"addresses": list(self.nameservers)}
        return _yaml({"version": 2, "ethernets": {"eth0": eth}})

    def user_data(self) -> str:
        data = {
            "hostname": self.hostname,
            "preserve_hostname": False,
            "disable_root": False,
            "ssh_pwauth": False,
            "ssh_authorized_keys": [self.authorized_key.strip()],
            "ssh_deletekeys": True,
            "ssh_genkeytypes": [],
            "ssh_keys": {
                "ed25519_private": self.host_key.private_openssh,
                "ed25519_public": self.host_key.public.strip(),
            },
        }
        return "#cloud-config\n" + _yaml(data)

    def files(self) -> dict[str, bytes]:
        return {
            "meta-data": self.meta_data().encode(),
            "user-data": self.user_data().encode(),
            "network-config": self.network_config().encode(),
        }


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def build_iso(files: dict[str, bytes]) -> bytes:
    """An ISO 9660 image labelled ``cidata`` holding ``files`` at its root."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for i, (name, data) in enumerate(sorted(files.items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{i};1", rr_name=name,
                   joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_iso(data: bytes) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (tests, debugging)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    out: dict[str, bytes] = {}
    try:
        for child in iso.list_children(rr_path="/"):
            if child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue()
    finally:
        iso.close()
    return out
