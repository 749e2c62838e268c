"""Constrained scalar types of the inventory format.

Every validator raises `invalid(message, hint)`, so the loader can show the message
as-is with a hint for the fix. Values stay plain strings (normalized) so they go
straight into Ansible variables, JSON and templates; use `ipaddress` on them when
arithmetic is needed.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from provision.inventory.problems import shown

ERROR_TYPE = "inventory"


def invalid(message: str, hint: str | None = None) -> PydanticCustomError:
    # The message travels in the context so user text with braces is never formatted.
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "hint": hint})


def _require_str(value: Any, what: str, example: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"expected {what}, got {show_value(value)}", f"write it like {example}")
    return value


def show_value(value: Any) -> str:
    """A wrong value as an error message shows it: its kind for a container or null."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return shown(value)


# --- IPv4 addresses and networks -------------------------------------------------


def _ipv4(value: Any) -> str:
    text = _require_str(value, "an IPv4 address", "10.250.0.11")
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise invalid(
            f"{show_value(text)} is not a valid IPv4 address",
            "write four numbers 0-255, like 10.250.0.11",
        ) from None


def _ipv4_network(value: Any) -> str:
    text = _require_str(value, "an IPv4 network in CIDR notation", "10.250.0.0/24")
    if "/" not in text:
        raise invalid(
            f"{show_value(text)} has no prefix length", f"write it in CIDR notation, like {text}/24"
        )
    try:
        return str(ipaddress.IPv4Network(text.strip(), strict=True))
    except ValueError as e:
        if "host bits set" in str(e):
            net = ipaddress.IPv4Network(text.strip(), strict=False)
            raise invalid(f"{show_value(text)} has host bits set", f"did you mean {net}?") from None
        raise invalid(
            f"{show_value(text)} is not a valid IPv4 network",
            "write it in CIDR notation, like 10.250.0.0/24",
        ) from None


IPv4 = Annotated[
    str,
    BeforeValidator(_ipv4),
    WithJsonSchema({"type": "string", "format": "ipv4", "examples": ["10.250.0.11"]}),
]
IPv4Network = Annotated[
    str,
    BeforeValidator(_ipv4_network),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$",
            "examples": ["10.250.0.0/24"],
        }
    ),
]

# --- MAC addresses ----------------------------------------------------------------

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _mac(value: Any) -> str:
    text = _require_str(value, "a MAC address", "52:54:00:12:34:56")
    norm = text.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(norm):
        raise invalid(
            f"{show_value(text)} is not a valid MAC address",
            "write six two-digit hex bytes separated by colons, like 52:54:00:12:34:56",
        )
    if int(norm[:2], 16) & 1:
        raise invalid(
            f"{show_value(text)} is a multicast MAC address",
            "the first byte of a NIC's MAC address is even, like 52:54:00:12:34:56",
        )
    return norm


MAC = Annotated[
    str,
    BeforeValidator(_mac),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$",
            "examples": ["52:54:00:12:34:56"],
        }
    ),
]

# --- names ------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


def _dns_label(value: Any) -> str:
    text = _require_str(value, "a name", "cp-1")
    if not _DNS_LABEL.fullmatch(text):
        fixed = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "node-1"
        raise invalid(
            f"{show_value(text)} is not a valid name",
            "use a DNS label: lowercase letters, digits and '-', starting and ending "
            f"with a letter or digit, at most 63 characters (like {fixed!r})",
        )
    return text


DNSLabel = Annotated[
    str,
    BeforeValidator(_dns_label),
    WithJsonSchema({"type": "string", "pattern": DNS_LABEL_PATTERN, "maxLength": 63}),
]

# --- sizes ------------------------------------------------------------------------

_SIZE = re.compile(r"^([1-9][0-9]*)(Ki|Mi|Gi|Ti)$")
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
SIZE_PATTERN = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)$"


def _size(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise invalid(
            f"{value} has no unit", f"write a size with a binary unit, like {value}Mi or 2Gi"
        )
    text = _require_str(value, "a size", "2Gi")
    m = _SIZE.fullmatch(text.strip())
    if not m:
        hint = "write a whole number with Ki, Mi, Gi or Ti, like 2Gi or 1536Mi"
        lower = re.fullmatch(r"([1-9][0-9]*)\s*([kmgt])i?b?", text.strip(), re.IGNORECASE)
        if lower:
            hint = f"did you mean {lower.group(1)}{lower.group(2).upper()}i?"
        raise invalid(f"{show_value(text)} is not a valid size", hint)
    return text.strip()


def size_bytes(size: str) -> int:
    """ "1536Mi" -> 1610612736."""
    m = _SIZE.fullmatch(size)
    if not m:
        raise ValueError(f"not a size: {size!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


Size = Annotated[
    str,
    BeforeValidator(_size),
    WithJsonSchema({"type": "string", "pattern": SIZE_PATTERN, "examples": ["2Gi", "1536Mi"]}),
]

# --- credentials ------------------------------------------------------------------

_ENV_REF = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")
CREDENTIAL_PATTERN = r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$"


def _credential_ref(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(
            "a credential must be a reference, not a literal value",
            "write env:NAME (an environment variable) or file:/path (a file holding it)",
        )
    if value.startswith("env:"):
        if not _ENV_REF.fullmatch(value):
            raise invalid(  # not repeated: it may be the secret, pasted after env:
                "the env: reference does not name a valid environment variable",
                "write env:NAME where NAME is letters, digits and '_', like env:BMC_PASSWORD",
            )
        return value
    if value.startswith("file:"):
        if len(value) == len("file:"):
            raise invalid("the file reference names no file", "write file:/path/to/secret")
        return value
    if value.startswith(("/", "~/", "./")):
        raise invalid(
            "a credential must be a reference, not a bare path",
            "write file: before the path, like file:~/.ssh/id_ed25519",
        )
    # Never echo the value back: it may be the secret itself.
    raise invalid(
        "a literal credential is not allowed in the inventory",
        "write env:NAME (an environment variable) or file:/path (a file holding it)",
    )


CredentialRef = Annotated[
    str,
    BeforeValidator(_credential_ref),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": CREDENTIAL_PATTERN,
            "examples": ["env:BMC_PASSWORD", "file:/etc/provision/bmc-password"],
        }
    ),
]

# --- Kubernetes version -----------------------------------------------------------

K8S_VERSION_PATTERN = r"^v[0-9]+\.[0-9]+\.[0-9]+$"
_K8S_VERSION = re.compile(K8S_VERSION_PATTERN)


def _k8s_version(value: Any) -> str:
    if isinstance(value, float):
        raise invalid(
            f"{show_value(value)} was read as a number",
            "write the full version as a string, like v1.37.2",
        )
    text = _require_str(value, "a Kubernetes version", "v1.37.2")
    if _K8S_VERSION.fullmatch(text):
        return text
    if re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", text):
        raise invalid(f"{show_value(text)} lacks the leading 'v'", f"write v{text}")
    raise invalid(f"{show_value(text)} is not a Kubernetes version", "write it like v1.37.2")


KubernetesVersion = Annotated[
    str,
    BeforeValidator(_k8s_version),
    WithJsonSchema({"type": "string", "pattern": K8S_VERSION_PATTERN, "examples": ["v1.37.2"]}),
]
