"""EC2 rules of the strict stand-in (images, copies, instances, tags, permissions, deprecation)."""

from __future__ import annotations


def install() -> None:
    """Patches moto's EC2 handlers with the rules below."""
