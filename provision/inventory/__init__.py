"""The inventory: schema, YAML loading with positions, validation, pool expansion.

inv = load_inventory("inventories/local.yaml")   # raises InventoryInvalid
for node in inv.etcd_members: ...
"""

from provision.inventory.credentials import CredentialUnavailable, resolve_credential
from provision.inventory.loader import check_inventory, load_inventory, parse_inventory
from provision.inventory.model import (
    API_VERSION,
    KIND,
    PROVIDERS,
    ROLES,
    ArtifactsSpec,
    Bmc,
    ClusterSpec,
    ControlPlaneSpec,
    EtcdSpec,
    Inventory,
    KubernetesSpec,
    LibvirtSettings,
    LocalSettings,
    MachineSpec,
    NetworkSpec,
    Node,
    NodeSpec,
    PoolSpec,
    ProvidersSpec,
    PxeSettings,
    SshSpec,
    StaticSettings,
    expand_nodes,
)
from provision.inventory.problems import InventoryInvalid, Problem
from provision.inventory.rules import supported_kubernetes_versions
from provision.inventory.schema import inventory_json_schema

__all__ = [
    "API_VERSION",
    "KIND",
    "PROVIDERS",
    "ROLES",
    "ArtifactsSpec",
    "Bmc",
    "ClusterSpec",
    "ControlPlaneSpec",
    "CredentialUnavailable",
    "EtcdSpec",
    "Inventory",
    "InventoryInvalid",
    "KubernetesSpec",
    "LibvirtSettings",
    "LocalSettings",
    "MachineSpec",
    "NetworkSpec",
    "Node",
    "NodeSpec",
    "PoolSpec",
    "Problem",
    "ProvidersSpec",
    "PxeSettings",
    "SshSpec",
    "StaticSettings",
    "check_inventory",
    "expand_nodes",
    "inventory_json_schema",
    "load_inventory",
    "parse_inventory",
    "resolve_credential",
    "supported_kubernetes_versions",
]
