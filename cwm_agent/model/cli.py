"""Commands of cwm_agent.model, added to the `cwm-agent` app by `register`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the top-level app."""
