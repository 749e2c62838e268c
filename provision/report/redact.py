"""Secret redaction: what a run record writes never contains a secret."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

# A PEM private key block (any flavour: RSA, EC, OPENSSH, ENCRYPTED, ...), also when
# its newlines are JSON-escaped or it was cut short before its END line.
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\:,-]*)",
    re.DOTALL,
)


class Redactor:
    """Replaces known secret strings and PEM private key blocks with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        # Very short strings would mask half the log and protect nothing.
        if len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, text: str) -> str:
        text = _PEM.sub(MASK, text)
        for secret in self._secrets:
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
