"""`cwm-agent sandbox ...`: the project's containers."""

from __future__ import annotations

import typer


def prune_command(
    run_id: str = typer.Option("", "--run-id", help="Only this run's containers."),
    dead_only: bool = typer.Option(False, "--dead-only", help="Only containers whose owner process is gone."),
) -> None:
    """Remove the containers cwm-agent left behind (e.g. after a run was killed with SIGKILL)."""
    from cwm_agent.sandbox.cleanup import prune  # inside: start-up time of the CLI (docker)

    removed = prune(run_id or None, dead_only=dead_only)
    for name in removed:
        typer.echo(f"removed {name}")
    typer.echo(f"{len(removed)} container(s) removed")
