"""`cwm-agent swebench select` and `swebench tts-report`: test-time scaling over a run's rollouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cwm_agent.cli.common import UsageError, split_ids
from cwm_agent.cli.console import err

out = Console()

_RUN = typer.Option(..., "--run", "-r", help="Output folder of `swebench run` (with --rollouts/--test-rollouts).")
_DATASET = typer.Option(None, "--dataset", "-d", help="Dataset file or Hugging Face id (default: the run's).")
_WORKERS = typer.Option(2, "--workers", "-w", min=1, help="Containers at a time.")
_IDS = typer.Option(None, "--instance-ids", help="Only these instances (repeat, or comma-separated).")
_TEST_TIMEOUT = typer.Option(120.0, "--test-timeout", min=1, help="Seconds one generated test may run.")
_TOP = typer.Option(5, "--top-tests", min=1, help="Generated tests used per instance (the most agreeing ones).")


def _options(workers: int, test_timeout: float, top_tests: int):
    from cwm_agent.tts.execute import ExecOptions

    return ExecOptions(workers=workers, test_timeout=test_timeout, top_tests=top_tests)


def _progress(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/dim]", highlight=False)


def _guarded(options, work):
    """Run `work()` so that Ctrl-C, SIGTERM or SIGHUP remove every container at once and exit 130/143/129.

    Sandboxes start in worker threads, where no signal handler can be installed: installed here."""
    from cwm_agent.sandbox import cleanup

    cleanup.install_handlers()
    with cleanup.sigterm_as_interrupt() as received:
        try:
            return work()
        except KeyboardInterrupt:
            cleanup.sweep_run(options.run_id)
            how = "terminated" if received else "interrupted"
            err.print(
                f"{how} (run id {options.run_id}): containers removed; finished results are cached "
                "(run again to continue).",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(cleanup.exit_code(received[0] if received else None)) from None


def select_command(
    run: Path = _RUN,
    strategy: str = typer.Option("cwm", "--strategy", "-s", help="majority, cwm, or MODULE:ATTRIBUTE (your own)."),
    output: Path = typer.Option(..., "--output", "-o", help="Predictions file to write (PREDS.why.jsonl beside it)."),
    dataset: Optional[str] = _DATASET,
    workers: int = _WORKERS,
    instance_ids: Optional[List[str]] = _IDS,
    test_timeout: float = _TEST_TIMEOUT,
    top_tests: int = _TOP,
) -> None:
    """Pick one patch per instance from a run's rollouts; writes official predictions and why each was chosen."""
    from cwm_agent.tts.select import select, write_selection
    from cwm_agent.tts.strategies import load_strategy

    if output.exists() and output.is_dir():
        raise UsageError(f"-o {output} is a directory; pass a file such as {output / 'preds.jsonl'}.")
    chosen = load_strategy(strategy)
    options = _options(workers, test_timeout, top_tests)
    selections, stats = _guarded(
        options, lambda: select(run, [chosen], dataset, split_ids(instance_ids), options, on_event=_progress)
    )
    selection = selections[chosen.name]
    why = write_selection(selection, output)
    for record in selection.why:
        pid = record["patch_id"] or "(empty)"
        out.print(f"{record['instance_id']}: {pid} - {escape(record['reason'])}", highlight=False, soft_wrap=True)
    out.print(
        f"{len(selection.predictions)} predictions ({chosen.name}) -> {output}; why -> {why}; "
        f"containers started: {stats.containers} ({stats.container_seconds:.1f} s), test runs: {stats.runs}",
        highlight=False,
        soft_wrap=True,
    )


def tts_report_command(
    run: Path = _RUN,
    strategies: Optional[List[str]] = typer.Option(
        None, "--strategy", "-s", help="Strategies to score (repeat or comma-separated; default: majority,cwm)."
    ),
    dataset: Optional[str] = _DATASET,
    workers: int = _WORKERS,
    instance_ids: Optional[List[str]] = _IDS,
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Also write the report here (always: RUN/tts/report.json)."
    ),
    test_timeout: float = _TEST_TIMEOUT,
    top_tests: int = _TOP,
) -> None:
    """pass@1, pass@k (official evaluation of every rollout), each strategy's accuracy and gap, cost per stage."""
    from cwm_agent.agent.files import write_text_atomic
    from cwm_agent.tts.candidates import load_candidates
    from cwm_agent.tts.report import evaluate_rollouts, make_report
    from cwm_agent.tts.select import run_dataset, select
    from cwm_agent.tts.strategies import load_strategy

    names = split_ids(strategies) or ["majority", "cwm"]
    chosen = [load_strategy(name) for name in names]
    options = _options(workers, test_timeout, top_tests)
    ids = [c.instance_id for c in load_candidates(run, split_ids(instance_ids))]
    instances = run_dataset(run, dataset, ids)
    selections, _ = _guarded(options, lambda: select(run, chosen, dataset, ids, options, on_event=_progress))
    outcomes = _guarded(options, lambda: evaluate_rollouts(run, [instances[i] for i in ids], workers, options.run_id))
    report = make_report(run, ids, outcomes, selections)
    text = json.dumps(report.as_dict(), indent=2) + "\n"
    write_text_atomic(run / "tts" / "report.json", text)
    if json_out is not None:
        write_text_atomic(json_out, text)
    _print_report(report, [s.name for s in chosen], run)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _print_report(report, names: list[str], run: Path) -> None:
    from rich.table import Table

    table = Table(title="Test-time scaling", show_header=True)
    table.add_column("instance", no_wrap=True)
    table.add_column("rollouts", justify="right")
    table.add_column("pass@1", justify="right")
    table.add_column("pass@k", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for iid, entry in report.per_instance.items():
        marks = ["yes" if entry["strategies"][n]["resolved"] else "no" for n in names]
        table.add_row(iid, str(entry["rollouts"]), _pct(entry["pass@1"]), "yes" if entry["pass@k"] else "no", *marks)
    total = report.total
    table.add_row(
        "total",
        str(total["rollouts"]),
        _pct(total["pass@1"]),
        _pct(total["pass@k"]),
        *[
            f"{_pct(total['strategies'][n]['accuracy'])} (gap {_pct(total['strategies'][n]['gap_to_pass@k'])})"
            for n in names
        ],
        style="bold",
    )
    out.print(table)
    costs = Table(title="Cost per stage", show_header=True)
    for col in ("stage", "prompt tokens", "completion tokens", "container-seconds"):
        costs.add_column(col, justify="left" if col == "stage" else "right")
    for stage, c in report.stages.items():
        costs.add_row(stage, f"{c['prompt_tokens']:,}", f"{c['completion_tokens']:,}", f"{c['container_seconds']:,.1f}")
    out.print(costs)
    out.print(f"report: {run / 'tts' / 'report.json'}", highlight=False, soft_wrap=True)
