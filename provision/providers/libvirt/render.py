"""The XML provision writes to libvirt: templates/*.xml.j2 rendered with jinja2, and
the XML namespace of the metadata it records in domains and networks (what cluster
and node they belong to, the spec a VM was made with)."""

from __future__ import annotations

from pathlib import Path

import jinja2

NS = "https://provision.dev/libvirt/v1"

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(["xml", "j2"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def render(template: str, **context: object) -> str:
    """templates/<template> with ``context`` and ``ns`` (the metadata namespace)."""
    return _TEMPLATES.get_template(template).render(ns=NS, **context)


__all__ = ["NS", "render"]
