"""EBS direct rules of the strict stand-in (StartSnapshot, PutSnapshotBlock, CompleteSnapshot)."""

from __future__ import annotations


def install() -> None:
    """Patches moto's EBS handlers with the rules below."""
