"""The secrets this process has learnt, so that nothing it writes repeats them.

Every place that learns a secret registers it at that moment: a credential when its
reference resolves (``inventory/credentials.py``), a key or kubeconfig when it is
written (``paths.write_secret``), the cluster key when it is read. The redactor
(``report/redact.py``) masks everything registered here in every line a run record,
Ansible's artifacts or a progress view writes, from the moment of registration on.

It lives in the base layer, beside ``paths``, because the places that learn secrets
sit in every layer (the inventory model below the report layer among them). It is
process-wide on purpose: a secret learnt by one component must be masked by all.
"""

from __future__ import annotations

import re
import threading

# Shorter values would mask ordinary words in every log and protect next to nothing.
MIN_LENGTH = 6

# A long run of the base64 alphabet inside a secret (a key's body line, the
# client-key-data of a kubeconfig, a token in a config file) is a secret on its own:
# it may be logged without the rest of the file around it. Random base64 of that
# length mixes upper and lower case and digits; paths and words in the same file
# (a cloud-init seed, say) do not, and stay readable.
_PIECE = re.compile(r"[A-Za-z0-9+/=]{32,}")


def _random_looking(piece: str) -> bool:
    return (any(c.isupper() for c in piece) and any(c.islower() for c in piece)
            and any(c.isdigit() for c in piece))

_lock = threading.Lock()
_known: set[str] = set()
_ordered: tuple[str, ...] = ()


def register(secret: str | bytes) -> None:
    """Mask ``secret`` (and each long base64-like run inside it) from now on."""
    text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
    pieces = {text.strip(), *(m.group(0) for m in _PIECE.finditer(text)
                              if _random_looking(m.group(0)))}
    global _ordered
    with _lock:
        new = {p for p in pieces if len(p) >= MIN_LENGTH} - _known
        if not new:
            return
        _known.update(new)
        # longest first, so that a secret containing another is masked whole
        _ordered = tuple(sorted(_known, key=len, reverse=True))


def known() -> tuple[str, ...]:
    """Every registered secret, longest first."""
    return _ordered
