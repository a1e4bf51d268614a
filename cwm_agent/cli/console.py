"""Where the command line talks to a person: one stderr console, and the one shape of a user error."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True)
"""Messages and progress (soft wrap: a path or a command is never broken across lines)."""


def user_error(message: str, code: int = 2) -> typer.Exit:
    """Print `error: MESSAGE` on one line and return the Exit to raise: `raise user_error(...)`."""
    # Escaped: a message naming `cwm-agent[gpu]` or a YAML list must print as written, not as markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)
