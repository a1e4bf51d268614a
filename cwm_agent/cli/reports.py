"""Reviewing runs: `show` (one trajectory), `report` (a run or two as static HTML), `swebench stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cwm_agent.cli.common import UsageError, check_output_dir
from cwm_agent.cli.console import err

COLOR_CHOICES = ("auto", "always", "never")


def make_console(color: str) -> Console:
    """A stdout console: `always` keeps colour through a pipe (`| less -R`), even under NO_COLOR."""
    if color not in COLOR_CHOICES:
        raise UsageError(f"--color {color}: use auto, always or never")
    if color == "always":
        return Console(force_terminal=True, no_color=False, color_system="256")
    if color == "never":
        return Console(color_system=None)
    return Console()


def show(
    path: Path = typer.Argument(
        ...,
        help="A trajectory .jsonl file, a solve/demo output folder, or a run folder (then give INSTANCE_ID).",
    ),
    instance_id: Optional[str] = typer.Argument(None, help="With a run folder: the instance to show."),
    rollout: int = typer.Option(0, "--rollout", "-k", min=0, help="With a run folder: which rollout."),
    kind: str = typer.Option("patch", "--kind", help="With a run folder: patch or test episode."),
    full: bool = typer.Option(False, "--full", help="Show everything (by default long texts and lines are cut)."),
    lines: int = typer.Option(25, "--lines", min=1, help="Lines shown of each long text."),
    width: int = typer.Option(400, "--width", min=20, help="Characters shown of each long line."),
    no_thinking: bool = typer.Option(False, "--no-thinking", help="Leave out the model's thinking."),
    turn: Optional[int] = typer.Option(None, "--turn", help="Show only this turn."),
    list_: bool = typer.Option(False, "--list", "-l", help="One line per turn: tool, call, seconds, tokens."),
    follow_: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing turns as a running episode writes them (Ctrl-C stops)."
    ),
    color: str = typer.Option("auto", "--color", help="auto, always (e.g. for `less -R`) or never."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval", help="Evaluation folder (default: the run's eval/)."),
) -> None:
    """Show a trajectory turn by turn: thinking, what the model wrote, tool call, observation, tokens,
    timings, and the evaluation outcome when there is one."""
    from cwm_agent.reports.show import (
        NotStarted,
        ShowOptions,
        follow,
        locate,
        show_list,
        show_trajectory,
        wait_for_start,
    )

    if kind not in ("patch", "test"):
        raise UsageError(f"--kind {kind}: use patch or test")
    if list_ and follow_:
        raise UsageError("--list and --follow do not go together")
    console = make_console(color)
    try:
        target = locate(path, instance_id, kind, rollout, eval_dir)
    except NotStarted as exc:
        if not follow_ or instance_id is None:
            raise
        err.print(f"{exc}; waiting for it (Ctrl-C stops)")
        try:
            target = wait_for_start(path, instance_id, kind, rollout, eval_dir)
        except KeyboardInterrupt:
            err.print("stopped waiting")
            raise typer.Exit(130) from None
    opts = ShowOptions(
        max_lines=None if full else lines,
        max_width=None if full else width,
        thinking=not no_thinking,
        turn=turn,
    )
    if list_:
        show_list(target, console)
    elif follow_:
        try:
            follow(target, console, opts, on_wait=lambda: err.print("[dim]following; Ctrl-C stops[/dim]"))
        except KeyboardInterrupt:
            err.print("stopped following")
            raise typer.Exit(130) from None
    else:
        show_trajectory(target, console, opts)


def report(
    run_dir: Path = typer.Argument(..., help="The run folder (swebench run's --output)."),
    compare: Optional[Path] = typer.Option(
        None, "--compare", help="A second run folder: a page of the instances one resolved and the other not."
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output folder (default: RUN_DIR/report, or RUN_DIR/compare-RUN_B)."
    ),
    eval_dir: Optional[Path] = typer.Option(None, "--eval", help="Evaluation folder (default: RUN_DIR/eval)."),
    rollout: int = typer.Option(
        0, "--rollout", "-k", min=0, help="With --compare: the patch rollout compared (default 0, pass@1's)."
    ),
) -> None:
    """Write a static HTML report of a run (open index.html; works offline): summary with plots, a
    sortable and filterable table of instances, a page per trajectory."""
    from cwm_agent.reports.html import write_compare, write_report
    from cwm_agent.reports.runfolder import load_run

    if rollout and compare is None:
        raise UsageError(
            "--rollout chooses what --compare compares; a report shows every rollout (add --compare RUN_B)"
        )
    run = load_run(run_dir, eval_dir)
    other = None if compare is None else load_run(compare)
    if other is not None and rollout >= max(run.rollouts, other.rollouts):
        raise UsageError(
            f"--rollout {rollout}: {run.name} has {run.rollouts} patch rollout(s) and {other.name} {other.rollouts}"
            " (rollouts count from 0)"
        )
    out = output or (run_dir / "report" if other is None else run_dir / f"compare-{other.name}")
    check_output_dir(out)
    try:
        index = write_report(run, out) if other is None else write_compare(run, other, out, rollout)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc} (pass -o DIR)") from None
    typer.echo(f"report: {index}")


def stats(
    run_dir: Path = typer.Argument(..., help="The run folder (swebench run's --output)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON (for scripts)."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval", help="Evaluation folder (default: RUN_DIR/eval)."),
    no_tools: bool = typer.Option(False, "--no-tools", help="Skip tool usage (reads no trajectories: faster)."),
) -> None:
    """A run's figures at a glance: resolved, endings, turns, tokens, time, per repository, tools."""
    from cwm_agent.reports.runfolder import load_run
    from cwm_agent.reports.summary import summarize
    from cwm_agent.reports.terminal import print_summary

    summary = summarize(load_run(run_dir, eval_dir), tools=not no_tools)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        print_summary(summary, Console())
