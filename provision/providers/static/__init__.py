"""Hosts that already exist: nothing to create, only to check they answer SSH."""

from provision.providers.static.provider import StaticProvider

__all__ = ["StaticProvider"]
