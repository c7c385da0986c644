from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder: this command module is being written."""
