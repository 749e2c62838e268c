"""Credential references (env:NAME, file:/path), resolved only at the moment of use.

The inventory, the state and the logs hold the reference, never the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from provision import secrets
from provision.errors import BadInput


class CredentialUnavailable(BadInput):
    """A credential reference points at nothing (unset variable, unreadable file)."""


def resolve_credential(ref: str, base_dir: Path | None = None) -> str:
    """The secret a reference points at. Relative file: paths are taken from base_dir
    (the inventory's directory). Trailing newlines of files are dropped."""
    if "\0" in ref:  # neither a variable nor a path can hold one (the OS refuses it)
        raise CredentialUnavailable("a credential reference holds a NUL character")
    if ref.startswith("env:"):
        name = ref[len("env:") :]
        value = os.environ.get(name)
        if value is None:
            raise CredentialUnavailable(f"credential {ref}: environment variable {name} is not set")
        secrets.register(value)  # masked in every log and record from now on
        return value
    if ref.startswith("file:"):
        path = Path(ref[len("file:") :]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise CredentialUnavailable(
                f"credential {ref}: cannot read {path}: {e.strerror}"
            ) from None
        secrets.register(value)  # masked in every log and record from now on
        return value
    raise CredentialUnavailable("not a credential reference: use env:NAME or file:/path")


def credential_path(ref: str, base_dir: Path | None = None) -> Path | None:
    """The file a file: reference names (for an SSH private key: pass the path, not the key)."""
    if not ref.startswith("file:"):
        return None
    path = Path(ref[len("file:") :]).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path
