"""SSM Parameter Store rules of the strict stand-in (names, hierarchy, aws:ec2:image)."""

from __future__ import annotations


def install() -> None:
    """Patches moto's SSM handlers with the rules below."""
