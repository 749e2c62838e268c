"""The inventory format (pydantic models) and the expanded, ready-to-use `Inventory`.

`ClusterSpec` and its parts mirror the YAML file one to one (camelCase keys, unknown
keys rejected); they are also the source of the JSON Schema. `Inventory` is what the
rest of provision works with: the same settings plus `nodes`, the explicit nodes and
the expanded pools, each with its effective role set.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import ComputedFieldInfo, FieldInfo

from provision.inventory.problems import Problem
from provision.inventory.types import (
    MAC,
    CredentialRef,
    DNSLabel,
    IPv4,
    IPv4Network,
    KubernetesVersion,
    Size,
    invalid,
    show_value,
    size_bytes,
)

API_VERSION = "provision.dev/v1alpha1"
KIND = "Cluster"

Role = Literal["control-plane", "etcd", "worker"]
ProviderName = Literal["local", "libvirt", "pxe", "static"]
ROLES: tuple[str, ...] = ("control-plane", "etcd", "worker")
PROVIDERS: tuple[str, ...] = ("local", "libvirt", "pxe", "static")


def _title(name: str, info: FieldInfo | ComputedFieldInfo) -> str:
    """JSON Schema title from the YAML key: "virtualIP" -> "Virtual IP"."""
    key = info.alias or name
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).split()
    words = [{"api": "API", "id": "ID"}.get(w.lower(), w) for w in words]
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


class Spec(BaseModel):
    """Base of every inventory section: camelCase keys, unknown keys are errors."""

    model_config = ConfigDict(
        extra="forbid",
        validate_by_alias=True,
        validate_by_name=False,
        field_title_generator=_title,
    )


def _unique_roles(roles: list[str]) -> list[str]:
    seen: set[str] = set()
    for role in roles:
        if role in seen:
            raise invalid(f"role {role!r} is listed twice", f"list {role!r} once")
        seen.add(role)
    return roles


# --- cluster-wide settings --------------------------------------------------------


class KubernetesSpec(Spec):
    """Kubernetes settings shared by every node."""

    version: KubernetesVersion = Field(
        description="Kubernetes release to install, like v1.37.2. Must be one the "
        "artifact set supports (`provision schema` lists them in the enum of this field).",
    )
    pod_cidr: IPv4Network = Field(
        default="10.244.0.0/16",
        alias="podCIDR",
        description="Pod network. Must not overlap the service network or the node subnet.",
    )
    service_cidr: IPv4Network = Field(
        default="10.96.0.0/12",
        alias="serviceCIDR",
        description="Service (ClusterIP) network. Must not overlap the pod network or the "
        "node subnet.",
    )
    cluster_domain: str = Field(
        default="cluster.local",
        alias="clusterDomain",
        description="DNS domain of the cluster's services.",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    cni: Literal["flannel"] = Field(default="flannel", description="Pod network plugin.")


class ControlPlaneSpec(Spec):
    """The Kubernetes API endpoint: a virtual IP (keepalived) in front of all API servers."""

    virtual_ip: IPv4 = Field(
        alias="virtualIP",
        description="Virtual IP of the API: an unused address of the node subnet, not a "
        "node's address and not the gateway.",
    )
    port: int = Field(
        default=6443, ge=1, le=65535, description="TCP port of the API on the virtual IP."
    )


class EtcdSpec(Spec):
    """Where the etcd members run."""

    placement: Literal["control-plane", "dedicated"] = Field(
        default="control-plane",
        description="control-plane: every control-plane node runs an etcd member (do not "
        "give nodes the etcd role). dedicated: the nodes with the etcd role are the members.",
    )


class ArtifactsSpec(Spec):
    """Where binaries, packages and images come from."""

    source: Literal["offline", "upstream"] = Field(
        default="offline",
        description="offline: the provisioner serves a locked artifact set to the nodes "
        "(no internet needed). upstream (online mode): kubeadm, kubelet and kubectl are the "
        "official release files (sha256 pinned in the lock; the mirror still serves them) "
        "and nodes pull Kubernetes, CoreDNS and flannel images from upstream registries; "
        "packages and the rest still come from the provisioner's mirror.",
    )


class NetworkSpec(Spec):
    """The node subnet."""

    subnet: IPv4Network = Field(
        description="Subnet of the node addresses, the API virtual IP and the gateway.",
    )
    gateway: IPv4 | None = Field(
        default=None,
        description="Default gateway of the nodes. Default: the first address of the subnet.",
    )

    @field_validator("subnet")
    @classmethod
    def _room_for_nodes(cls, subnet: str) -> str:
        if ipaddress.IPv4Network(subnet).prefixlen > 29:
            raise invalid(
                f"subnet {subnet} is too small",
                "use a /29 or larger: it holds the gateway, the virtual IP and the nodes",
            )
        return subnet

    @model_validator(mode="after")
    def _default_gateway(self) -> NetworkSpec:
        if self.gateway is None:
            self.gateway = str(next(ipaddress.IPv4Network(self.subnet).hosts()))
        return self

    @property
    def ip_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)


class SshSpec(Spec):
    """How provision logs in to the nodes."""

    user: str = Field(
        default="root", pattern=r"^[a-z_][a-z0-9_-]*\$?$", description="Login user on every node."
    )
    private_key: CredentialRef | None = Field(
        default=None,
        alias="privateKey",
        description="Private key to log in with, as file:/path (or env:NAME). Default: the "
        "cluster's own generated ed25519 key (used for local and libvirt machines).",
    )


# --- machines and out-of-band management -------------------------------------------


class MachineSpec(Spec):
    """A machine: CPU and memory limits for local machines, VM size for libvirt, the
    disk to install on for bare metal."""

    cpus: int | None = Field(default=None, ge=1, le=1024, description="Number of CPUs.")
    memory: Size | None = Field(default=None, description="Memory, like 2Gi or 1536Mi.")
    disk: Size | None = Field(
        default=None,
        description="Root disk size, like 20Gi (libvirt VMs; for pxe the smallest disk the "
        "node image may be written to).",
    )
    root_device: str | None = Field(
        default=None,
        alias="rootDevice",
        pattern=r"^/dev/[A-Za-z0-9/._:-]+$",
        description="pxe: the disk the node image is written to, like /dev/sda or "
        "/dev/disk/by-id/wwn-0x5000c500a0b1c2d3 (stable across reboots). Default: the "
        "first disk the installer finds (NVMe, then SCSI/SATA, then virtio).",
    )

    @property
    def memory_bytes(self) -> int | None:
        return size_bytes(self.memory) if self.memory else None

    @property
    def disk_bytes(self) -> int | None:
        return size_bytes(self.disk) if self.disk else None


_HOST = re.compile(
    r"^(?:https?://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)(:[0-9]{1,5})?(/.*)?$"
)


class Bmc(Spec):
    """Baseboard management controller of a bare-metal machine: powers it on to PXE-boot."""

    type: Literal["redfish", "ipmi"] = Field(description="Management protocol.")
    address: str = Field(
        description="BMC host or IP, optionally with :port; for Redfish also https://host."
    )
    username: str = Field(description="BMC login (a name, or a credential reference).")
    password: CredentialRef = Field(
        description="BMC password as a reference: env:NAME or file:/path. Never the password "
        "itself: it is read only when the BMC is used, and never stored or logged.",
    )
    system_id: str | None = Field(
        default=None,
        alias="systemId",
        description="Redfish system id when the BMC manages several systems. Default: the "
        "only system.",
    )
    verify_tls: bool = Field(
        default=True, alias="verifyTLS", description="Check the Redfish endpoint's TLS certificate."
    )
    insecure: bool = Field(
        default=False,
        description="Accept talking to this Redfish BMC without a verified TLS connection "
        "(an http:// address, or verifyTLS: false). Refused unless set: the BMC password "
        "would cross the network unprotected or to a BMC nobody vouched for.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if "@" in value:  # not repeated: user:password@host holds the password
            raise invalid(
                "a BMC address holds no user or password",
                "write the host only; the login goes in username and password",
            )
        if not _HOST.fullmatch(value):
            raise invalid(
                f"{show_value(value)} is not a valid BMC address",
                "write a host or IP, optionally with :port, like 10.0.0.201 or bmc-1:623",
            )
        return value

    @model_validator(mode="after")
    def _url_only_for_redfish(self) -> Bmc:
        if self.type == "ipmi" and "://" in self.address:
            raise invalid(
                "an IPMI BMC address is a host, not a URL",
                "write the host or IP only, optionally with :port",
            )
        return self

    @model_validator(mode="after")
    def _tls_unless_insecure(self) -> Bmc:
        if self.type != "redfish" or self.insecure:
            return self
        if self.address.startswith("http://"):
            raise invalid(
                "a Redfish BMC over plain http:// would receive its password unprotected",
                "use https://, or set insecure: true on this BMC to accept it",
            )
        if not self.verify_tls:
            raise invalid(
                "verifyTLS: false talks to any BMC that answers at this address",
                "give the BMC a certificate the provisioner trusts, or set insecure: true "
                "on this BMC to accept it",
            )
        return self


# --- providers --------------------------------------------------------------------


class LocalSettings(Spec):
    """Lab machines on this host: systemd-nspawn machines in network namespaces."""

    image: str = Field(default="debian-12", description="Node image recipe from images/.")
    api_forward_port: int = Field(
        default=16443,
        alias="apiForwardPort",
        ge=1,
        le=65535,
        description="Loopback port on this host forwarded to the API virtual IP; the "
        "written kubeconfig points at it.",
    )


class LibvirtSettings(Spec):
    """KVM virtual machines created through libvirt."""

    uri: str = Field(default="qemu:///system", description="libvirt connection URI.")
    network: str | None = Field(
        default=None,
        description="Existing libvirt network the VMs attach to. Default (neither network "
        "nor bridge set): provision creates an isolated network pv-<cluster> holding the "
        "node subnet's gateway, and removes it on destroy.",
    )
    bridge: str | None = Field(
        default=None,
        description="Existing bridge on the libvirt host the VMs attach to, instead of a "
        "libvirt network (like br-lab of a lab namespace).",
        pattern=r"^[A-Za-z0-9_.:-]{1,15}$",
    )
    netns: str | None = Field(
        default=None,
        description="Network namespace on this host where the VMs' network lives (a lab "
        "namespace): provision reaches the VMs through it. Default: the host's own.",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )
    pool: str = Field(default="default", description="Storage pool for the VM disks.")
    image: str = Field(default="debian-12", description="VM image recipe from images/.")
    defaults: MachineSpec | None = Field(
        default=None,
        description="Machine size for libvirt nodes that set none (cpus, memory and disk "
        "are all required per node, from here or from the node/template).",
    )

    @model_validator(mode="after")
    def _one_attachment(self) -> LibvirtSettings:
        if self.network is not None and self.bridge is not None:
            raise invalid(
                "set either network or bridge, not both",
                "network: an existing libvirt network; bridge: an existing host bridge",
            )
        return self


class PxeSettings(Spec):
    """Bare-metal machines that PXE-boot from the provisioner, powered through their BMC."""

    interface: str = Field(
        description="Provisioner network interface on the node subnet: DHCP, TFTP and "
        "HTTP boot are served there."
    )
    server_address: IPv4 | None = Field(
        default=None,
        alias="serverAddress",
        description="Provisioner address on the node subnet. Default: the gateway.",
    )
    image: str = Field(
        default="debian-12",
        description="Image recipe from images/ with kind = \"metal\": the installer "
        "(kernel + initrd) and the node disk image.",
    )
    boot_timeout: int = Field(
        default=1800,
        alias="bootTimeout",
        ge=60,
        description="Seconds to wait for a machine to install and report done.",
    )
    dhcp: Literal["dedicated", "proxy"] = Field(
        default="dedicated",
        description="dedicated: provision's dnsmasq is the DHCP server of the provisioning "
        "network and leases each node its inventory address (by MAC). proxy: another DHCP "
        "server leases addresses; dnsmasq only adds the boot information (proxy DHCP).",
    )
    answer_unknown: bool = Field(
        default=False,
        alias="answerUnknown",
        description="Answer DHCP/PXE requests of MACs the inventory does not name (they "
        "get nothing to boot but a message). Default: ignore them.",
    )
    http_port: int = Field(
        default=8090,
        alias="httpPort",
        ge=1,
        le=65535,
        description="Port of the boot HTTP server (iPXE scripts, installer, node image, "
        "install callbacks) on serverAddress.",
    )
    netns: str | None = Field(
        default=None,
        description="Network namespace of this host where the provisioning network is "
        "(a lab namespace): DHCP, TFTP and HTTP are served inside it. Default: the host's "
        "own.",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )


class StaticSettings(Spec):
    """Existing hosts, reachable over SSH at their address. Nothing is created."""


class ProvidersSpec(Spec):
    """The providers nodes may use. A node's provider must be configured here."""

    local: LocalSettings | None = Field(default=None, description="Lab machines on this host.")
    libvirt: LibvirtSettings | None = Field(default=None, description="libvirt virtual machines.")
    pxe: PxeSettings | None = Field(default=None, description="PXE-booted bare metal.")
    static: StaticSettings | None = Field(default=None, description="Existing hosts.")

    @field_validator("local", "libvirt", "pxe", "static", mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: Any) -> Any:
        # `static:` with nothing after it means "configured, all defaults".
        return {} if value is None else value

    def configured(self) -> list[str]:
        return [name for name in PROVIDERS if getattr(self, name) is not None]


# --- nodes and pools --------------------------------------------------------------


class NodeSpec(Spec):
    """One machine, declared by name."""

    name: DNSLabel = Field(description="Node name and hostname (a DNS label), unique.")
    roles: list[Role] = Field(
        min_length=1,
        description="What the node runs: control-plane, worker, and etcd (only with "
        "etcd.placement: dedicated).",
    )
    provider: ProviderName = Field(description="Which provider makes this machine.")
    address: IPv4 = Field(description="Static address in the node subnet, unique.")
    machine: MachineSpec | None = Field(default=None, description="Machine size.")
    mac: MAC | None = Field(
        default=None,
        description="MAC address of the boot NIC (required for pxe; optional for libvirt).",
    )
    bmc: Bmc | None = Field(default=None, description="BMC of the machine (required for pxe).")

    @field_validator("roles")
    @classmethod
    def _unique(cls, roles: list[str]) -> list[str]:
        return _unique_roles(roles)


class PoolSpec(Spec):
    """A group of identical nodes: expands to <name>-1 .. <name>-<count>."""

    name: DNSLabel = Field(description="Pool name; nodes are named <name>-1, <name>-2, ...")
    count: int = Field(
        ge=0,
        le=1000,
        description="Number of nodes. Raising it adds the next numbers; lowering it "
        "removes the highest. Existing nodes are never renamed.",
    )
    roles: list[Role] = Field(min_length=1, description="Roles of every node of the pool.")
    provider: ProviderName = Field(description="Which provider makes these machines.")
    first_address: IPv4 = Field(
        alias="firstAddress",
        description="Address of <name>-1; node i gets firstAddress + i - 1.",
    )
    template: MachineSpec = Field(
        default_factory=lambda: MachineSpec(), description="Machine size of every node."
    )
    macs: list[MAC] = Field(
        default_factory=list,
        description="pxe pools: the boot NIC MAC of each node, in order (at least count).",
    )
    bmcs: list[Bmc] = Field(
        default_factory=list,
        description="pxe pools: the BMC of each node, in order (at least count).",
    )

    @field_validator("roles")
    @classmethod
    def _unique(cls, roles: list[str]) -> list[str]:
        return _unique_roles(roles)

    def node_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    def node_address(self, index: int) -> str:
        return str(ipaddress.IPv4Address(self.first_address) + index - 1)


class ClusterSpec(Spec):
    """A provision inventory: one cluster, its settings and its machines."""

    model_config = ConfigDict(
        title="provision inventory",
        json_schema_extra={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://provision.dev/schemas/v1alpha1/cluster.json",
        },
    )

    api_version: Literal["provision.dev/v1alpha1"] = Field(
        alias="apiVersion", description="Format version of this file."
    )
    kind: Literal["Cluster"] = Field(description="What this file declares.")
    name: DNSLabel = Field(description="Cluster name (a DNS label); names its state directory.")
    kubernetes: KubernetesSpec = Field(description="Kubernetes settings.")
    control_plane: ControlPlaneSpec = Field(
        alias="controlPlane", description="API endpoint (virtual IP and port)."
    )
    etcd: EtcdSpec = Field(default_factory=lambda: EtcdSpec(), description="Where etcd runs.")
    artifacts: ArtifactsSpec = Field(
        default_factory=lambda: ArtifactsSpec(), description="Where binaries and images come from."
    )
    network: NetworkSpec = Field(description="Node subnet and gateway.")
    ssh: SshSpec = Field(default_factory=lambda: SshSpec(), description="SSH login to the nodes.")
    providers: ProvidersSpec = Field(
        default_factory=lambda: ProvidersSpec(), description="Provider settings."
    )
    nodes: list[NodeSpec] = Field(default_factory=list, description="Nodes declared one by one.")
    pools: list[PoolSpec] = Field(default_factory=list, description="Pools of identical nodes.")


# --- the expanded inventory -------------------------------------------------------


class Node(BaseModel):
    """One concrete node: an explicit node, or one member of an expanded pool."""

    model_config = ConfigDict(frozen=True)

    name: str
    roles: frozenset[str]  # effective roles: includes etcd on co-located control planes
    provider: str
    address: str
    machine: MachineSpec = Field(default_factory=MachineSpec)
    mac: str | None = None
    bmc: Bmc | None = None
    pool: str | None = None  # the pool it comes from, None for an explicit node
    index: int | None = None  # its number in the pool (1-based)

    def has_role(self, role: str) -> bool:
        return role in self.roles


def expand_nodes(spec: ClusterSpec) -> list[Node]:
    """Explicit nodes in file order, then each pool's nodes by number."""
    colocated = spec.etcd.placement == "control-plane"

    def effective(roles: list[str]) -> frozenset[str]:
        out = set(roles)
        if colocated and "control-plane" in out:
            out.add("etcd")
        return frozenset(out)

    nodes = [
        Node(
            name=n.name,
            roles=effective(list(n.roles)),
            provider=n.provider,
            address=n.address,
            machine=n.machine or MachineSpec(),
            mac=n.mac,
            bmc=n.bmc,
        )
        for n in spec.nodes
    ]
    for pool in spec.pools:
        for i in range(1, pool.count + 1):
            nodes.append(
                Node(
                    name=pool.node_name(i),
                    roles=effective(list(pool.roles)),
                    provider=pool.provider,
                    address=pool.node_address(i),
                    machine=pool.template,
                    mac=pool.macs[i - 1] if i <= len(pool.macs) else None,
                    bmc=pool.bmcs[i - 1] if i <= len(pool.bmcs) else None,
                    pool=pool.name,
                    index=i,
                )
            )
    return nodes


@dataclass
class Inventory:
    """A validated inventory. `nodes` holds every node, pools expanded."""

    spec: ClusterSpec
    nodes: list[Node]
    source_path: Path | None = None
    warnings: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kubernetes(self) -> KubernetesSpec:
        return self.spec.kubernetes

    @property
    def control_plane(self) -> ControlPlaneSpec:
        return self.spec.control_plane

    @property
    def etcd(self) -> EtcdSpec:
        return self.spec.etcd

    @property
    def artifacts(self) -> ArtifactsSpec:
        return self.spec.artifacts

    @property
    def network(self) -> NetworkSpec:
        return self.spec.network

    @property
    def ssh(self) -> SshSpec:
        return self.spec.ssh

    @property
    def providers(self) -> ProvidersSpec:
        return self.spec.providers

    @property
    def pools(self) -> list[PoolSpec]:
        return self.spec.pools

    def credential(self, ref: str) -> str:
        """Read a credential reference now (file: paths relative to the inventory)."""
        from provision.inventory.credentials import resolve_credential

        return resolve_credential(ref, self.source_path.parent if self.source_path else None)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node named {name!r} in inventory {self.name!r} (nodes: {known})")

    def nodes_with_role(self, role: str) -> list[Node]:
        """Nodes with this effective role, in inventory order."""
        return [n for n in self.nodes if role in n.roles]

    def nodes_for_provider(self, provider: str) -> list[Node]:
        return [n for n in self.nodes if n.provider == provider]

    @property
    def control_plane_nodes(self) -> list[Node]:
        return self.nodes_with_role("control-plane")

    @property
    def worker_nodes(self) -> list[Node]:
        return self.nodes_with_role("worker")

    @property
    def etcd_members(self) -> list[Node]:
        """The etcd cluster: control-plane nodes (co-located) or the etcd-role nodes."""
        return self.nodes_with_role("etcd")
