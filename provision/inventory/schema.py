"""The JSON Schema of the inventory format, for editors and `provision schema`."""

from __future__ import annotations

import copy
from typing import Any

from provision.inventory.model import ClusterSpec
from provision.inventory.rules import supported_kubernetes_versions

_cache: dict[str, Any] | None = None


def inventory_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of an inventory file, with a description on every field."""
    global _cache
    if _cache is None:
        schema = ClusterSpec.model_json_schema(by_alias=True, mode="validation")
        version = schema["$defs"]["KubernetesSpec"]["properties"]["version"]
        version["enum"] = list(supported_kubernetes_versions())
        _cache = schema
    return copy.deepcopy(_cache)
