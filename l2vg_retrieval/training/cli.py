"""`l2vg train` and `l2vg queries`: the training pipeline's commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the training commands to the root ``l2vg`` app."""
