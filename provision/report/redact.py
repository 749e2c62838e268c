"""Secret redaction: what a run record writes never contains a secret.

A :class:`Redactor` masks, in this order: PEM private key blocks, kubeadm bootstrap
tokens and certificate keys (they are made on the nodes, inside Ansible, so no Python
code learns them to register), every secret registered with :func:`register` in this
process (``provision/secrets.py``), and the redactor's own extra secrets. Writers call
it on every line before the line reaches a file, so a run killed at any moment has
nothing left to scrub.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from provision import secrets
from provision.secrets import register

MASK = "***"

# A PEM private key block (any flavour: RSA, EC, OPENSSH, ENCRYPTED, ...), also when
# its newlines are JSON-escaped or it was cut short before its END line.
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\:,-]*)",
    re.DOTALL,
)

# A kubeadm bootstrap token, ``[a-z0-9]{6}.[a-z0-9]{16}`` (kubeadm init prints the one
# it makes, valid 24 h: "Using token: ..." and in the join command). Not when it is a
# piece of a longer dotted name.
_BOOTSTRAP_TOKEN = re.compile(r"(?<![A-Za-z0-9.-])[a-z0-9]{6}\.[a-z0-9]{16}(?![A-Za-z0-9.-])")

# The key that decrypts the control-plane certificates kubeadm uploads (64 hex digits),
# after the flag, field or variable that carries it (--certificate-key, certificateKey,
# common_join_certificate_key).
_CERTIFICATE_KEY = re.compile(r"((?i:certificate[-_]?key)[\s=\"':]*)[0-9a-f]{64}(?![0-9a-f])")


class Redactor:
    """Replaces secrets (registered, own, PEM blocks, bootstrap tokens) with ``***``."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for secret in extra:
            self.add(secret)

    def add(self, secret: str) -> None:
        """A secret masked by this redactor only (registered secrets reach every one)."""
        if len(secret) >= secrets.MIN_LENGTH and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, text: str) -> str:
        text = _PEM.sub(MASK, text)
        text = _BOOTSTRAP_TOKEN.sub(MASK, text)
        text = _CERTIFICATE_KEY.sub(rf"\g<1>{MASK}", text)
        for secret in (*secrets.known(), *self._secrets):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def data(self, value: Any) -> Any:
        """Redact every string (keys too) inside JSON-like data."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


__all__ = ["MASK", "Redactor", "register"]
