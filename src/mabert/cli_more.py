"""Verbs for the later stages (fuse/export/audit/bench, training, demo) registered onto the CLI."""
from __future__ import annotations


def add_verbs(verbs) -> None:
    pass
