"""Bare metal: machines that network-boot from the provisioner, powered through their
BMC (Redfish or IPMI), installed from the node image, then booted from their disk."""

from provision.providers.pxe.provider import PxeProvider

__all__ = ["PxeProvider"]
