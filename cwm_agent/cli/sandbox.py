"""`cwm-agent sandbox ...`: the project's containers."""

from __future__ import annotations

from typing import Optional

import typer


def prune_command(
    run_id: Optional[str] = typer.Option(
        None, "--run-id", help="Remove this run's containers, live or not (the id each command prints)."
    ),
    everything: bool = typer.Option(
        False, "--all", help="Remove EVERY cwm-agent container on the engine, other users' live runs included."
    ),
    dead_only: bool = typer.Option(
        False, "--dead-only", help="With --run-id: only those whose owner process is gone (always so without it)."
    ),
) -> None:
    """Remove containers cwm-agent left behind (e.g. after a kill -9). Without options only those whose
    owner process is gone; --run-id ID a run's; --all every one."""
    from cwm_agent.cli.common import UsageError
    from cwm_agent.sandbox.cleanup import prune  # inside: start-up time of the CLI (docker)

    if run_id is not None and not run_id.strip():
        raise UsageError("--run-id is empty (an unset shell variable?): give a run id, or --all for every container")
    if run_id is not None and everything:
        raise UsageError("--run-id and --all: give one of them")
    removed = prune(run_id, dead_only=dead_only, everything=everything)
    for name in removed:
        typer.echo(f"removed {name}")
    typer.echo(f"{len(removed)} container(s) removed")
