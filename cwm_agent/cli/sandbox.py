"""Commands of cwm_agent.sandbox, added to the `cwm-agent` app by `register`."""

from __future__ import annotations

import typer

sandbox_app = typer.Typer(help="Manage the project's sandbox containers.", no_args_is_help=True)


@sandbox_app.command("prune")
def prune_command(
    run_id: str = typer.Option("", "--run-id", help="Only this run's containers."),
    dead_only: bool = typer.Option(False, "--dead-only", help="Only containers whose owner process is gone."),
) -> None:
    """Remove the containers cwm-agent left behind (e.g. after a run was killed with SIGKILL)."""
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.sandbox.cleanup import prune

    try:
        removed = prune(run_id or None, dead_only=dead_only)
    except SandboxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for name in removed:
        typer.echo(f"removed {name}")
    typer.echo(f"{len(removed)} container(s) removed")


def register(app: typer.Typer) -> None:
    """Add this part's commands to the top-level app."""
    app.add_typer(sandbox_app, name="sandbox")
