"""The `cwm-agent` command line: every command, wired in one table.

Each module of this package holds the commands of one part as plain functions; they import the
pipeline inside their bodies so that `cwm-agent --help` starts in a fraction of a second.
`common.command` wraps each one so that a `UserError` becomes one line and an exit code.
"""

from __future__ import annotations

from typing import Any, Callable

import typer

from cwm_agent import __version__
from cwm_agent.cli import forage, reports, sandbox, serve, setup, solve, swebench, swebench_run, tts
from cwm_agent.cli.common import command

_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _typer(name: str | None, help: str) -> typer.Typer:
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings=_SETTINGS,
    )


app = _typer("cwm-agent", "Run Meta's Code World Model (CWM) as a software-engineering agent.")
swebench_app = _typer(
    "swebench", "SWE-bench: run the agent over a dataset, evaluate patches like the official harness."
)
sandbox_app = _typer("sandbox", "Manage the project's sandbox containers.")
forage_app = _typer("forage", "ForagerAgent: mutate-fix tasks from a repository image, trajectories, training records.")


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


COMMANDS: list[tuple[typer.Typer, str, Callable[..., Any]]] = [
    (app, "setup", setup.setup),
    (app, "serve", serve.serve),
    (app, "solve", solve.solve),
    (app, "demo", solve.demo),
    (app, "show", reports.show),
    (app, "report", reports.report),
    (app, "config", solve.show_config),
    (swebench_app, "run", swebench_run.run_command),
    (swebench_app, "eval", swebench.eval_command),
    (swebench_app, "build-local", swebench.build_local),
    (swebench_app, "local-dataset", swebench.local_dataset),
    (swebench_app, "eval-script", swebench.eval_script),
    (swebench_app, "replay-gold", swebench.replay_gold),
    (swebench_app, "select", tts.select_command),
    (swebench_app, "tts-report", tts.tts_report_command),
    (swebench_app, "stats", reports.stats),
    (sandbox_app, "prune", sandbox.prune_command),
    (forage_app, "tasks", forage.tasks_command),
    (forage_app, "run", forage.run_command),
    (forage_app, "export", forage.export_command),
]
"""(group, name, function) of every command."""

for _group, _name, _fn in COMMANDS:
    _group.command(_name)(command(_fn))
app.add_typer(swebench_app, name="swebench")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(forage_app, name="forage")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
