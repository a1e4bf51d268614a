"""`cwm-agent forage tasks|run|export`: mutate-fix tasks from a repository image, trajectories, training records."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import List, Optional

import typer

from cwm_agent.cli.common import RELEASE_HELP, SET_HELP, UsageError, check_output_dir, run_config
from cwm_agent.cli.console import err


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def tasks_command(
    image: str = typer.Option(..., "--image", help="The repository image (the code and its tests at --repo-dir)."),
    output: Path = typer.Option(..., "--output", "-o", help="Tasks file to write (JSONL, SWE-bench format)."),
    count: int = typer.Option(10, "--count", "-n", min=1, help="Tasks to make."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed on the same image gives the same tasks."),
    repo_dir: str = typer.Option("/testbed", "--repo-dir", help="Where the repository is in the image."),
    test_cmd: str = typer.Option(
        "pytest", "--test-cmd", help="The project's pytest command, run in --repo-dir (e.g. 'python -m pytest tests')."
    ),
    repo: Optional[str] = typer.Option(None, "--repo", help="The tasks' `repo` (default: from the image name)."),
    version: str = typer.Option("forage", "--version", help="The tasks' `version`."),
    max_candidates: Optional[int] = typer.Option(
        None, "--max-candidates", min=1, help="Most mutations to try (default: 30 per task)."
    ),
    per_function: int = typer.Option(2, "--per-function", min=1, help="Most tasks from one function."),
    test_timeout: float = typer.Option(600.0, "--test-timeout", min=1, help="Seconds the test suite may run."),
    jobs: int = typer.Option(
        1, "--jobs", "-j", min=1, help="Candidates validated at once, one container each (same tasks for any N)."
    ),
    full_check: bool = typer.Option(
        False, "--full-check", help="Run the whole suite for every candidate, not only the tests covering its function."
    ),
) -> None:
    """Make mutate-fix tasks: bugs put into covered functions, each validated by its tests, each with its own image."""
    from cwm_agent.forager.generate import ForageOptions, generate_tasks, write_tasks
    from cwm_agent.sandbox.cleanup import sigterm_as_interrupt, sweep_run

    if output.is_dir():
        raise UsageError(f"--output {output} is a directory; pass a file name (e.g. tasks.jsonl).")
    if not output.parent.exists():
        raise UsageError(f"--output {output}: folder {output.parent} does not exist.")
    run_id = uuid.uuid4().hex[:12]
    options = ForageOptions(
        image=image, repo_dir=repo_dir, test_cmd=test_cmd, count=count, seed=seed, repo=repo, version=version,
        max_candidates=max_candidates, per_function=per_function, test_timeout=test_timeout, full_check=full_check,
        jobs=jobs, run_id=run_id,
    )  # fmt: skip

    def progress(s) -> None:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(s.rejected.items())) or "none"
        err.print(f"tried {s.tried}: {s.accepted}/{count} kept; rejected: {rejected}", highlight=False)

    try:
        with sigterm_as_interrupt():
            rows, stats = generate_tasks(options, on_progress=progress)
    except KeyboardInterrupt:
        sweep_run(run_id)
        err.print("interrupted: containers removed, no tasks file written.", highlight=False)
        raise typer.Exit(130) from None
    except BaseException:
        sweep_run(run_id)
        raise
    write_tasks(rows, output)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(stats.rejected.items())) or "none"
    typer.echo(
        f"{len(rows)} tasks written to {output} ({stats.passing_tests} passing tests, "
        f"{stats.covered_functions} covered functions, {stats.candidates} candidate mutations, {stats.tried} tried; "
        f"rejected: {rejected}) in {stats.seconds.get('total', 0):.1f} s"
    )
    if len(rows) < count:
        err.print(
            f"only {len(rows)} of the {count} tasks asked for: the candidates (or --max-candidates) ran out.",
            highlight=False,
        )
        if not rows:
            raise typer.Exit(1)


def run_command(
    tasks: Path = typer.Option(..., "--tasks", "-t", help="Tasks file (from `forage tasks`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder."),
    workers: int = typer.Option(4, "--workers", "-w", min=1, help="Episodes at once (one sandbox each)."),
    rollouts: int = typer.Option(1, "--rollouts", "-k", min=1, help="Trajectories per task."),
    model_urls: Optional[List[str]] = typer.Option(
        None, "--model-url", help="OpenAI-compatible endpoint; repeat for several servers of one model."
    ),
    model_urls_file: Optional[Path] = typer.Option(
        None, "--model-urls-file", help="A file of model server URLs, one per line (with or instead of --model-url)."
    ),
    executor_name: str = typer.Option(
        "local", "--executor", help="Where episodes and evaluations run: local (this host, -w at once) or ray."
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="The Ray cluster's address HOST:PORT (default: the one this host belongs to)."
    ),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML config (see `cwm-agent config`)."),
    set_options: Optional[List[str]] = typer.Option(None, "--set", "-c", help=SET_HELP),
    cwm_release: Optional[Path] = typer.Option(None, "--cwm-release", help=RELEASE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed of rollout k is SEED + k."),
    grade_unfinished: bool = typer.Option(
        False, "--grade-unfinished", help="Evaluate the last submission of episodes ended by a limit too."
    ),
    rerun_errors: bool = typer.Option(False, "--rerun-errors", help="Run again items that ended in an error."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Continue a run folder made with other settings."),
) -> None:
    """Collect K trajectories per task (the `swebench run` machinery), then evaluate each with its task's tests.

    Resumable: run it again and finished episodes and evaluations are skipped. Exit status as `swebench run`:
    0 when every episode ran, 3 when some errored, 4 when the model server went down.
    """

    from cwm_agent.forager.collect import evaluate_rollouts, keep_tasks
    from cwm_agent.model.endpoints import endpoint_urls
    from cwm_agent.runs.batch import exit_code
    from cwm_agent.runs.display import LiveDisplay
    from cwm_agent.runs.executor import make_executor
    from cwm_agent.runs.summary import summary_lines
    from cwm_agent.sandbox.cleanup import signal_exit_code, sigterm_as_interrupt, sweep_run
    from cwm_agent.swebench.batch import SWEBenchRun, check_unique
    from cwm_agent.swebench.dataset import load_instances
    from cwm_agent.swebench.evaluate import EvalOptions

    check_output_dir(output)
    urls = endpoint_urls(model_urls, model_urls_file)
    config = run_config(config_file, set_options, cwm_release, {"model": {"url": urls[0]} if urls else {}})
    executor = make_executor(executor_name, ray_address)
    instances = load_instances(tasks)
    if not instances:
        raise UsageError(f"--tasks {tasks} holds no task.")
    check_unique(instances, str(tasks))
    run = SWEBenchRun(
        instances=instances, config=config, output=output, dataset_source=str(tasks.resolve()), workers=workers,
        rollouts=rollouts, seed=seed, grade_unfinished=grade_unfinished, rerun_errors=rerun_errors,
        allow_mixed=allow_mixed, run_id=uuid.uuid4().hex[:12], urls=urls, executor=executor,
    )  # fmt: skip

    def announce(batch) -> None:  # noqa: ANN001
        keep_tasks(instances, output)  # the folder is ours now (model checked, lock taken)
        err.print(
            _escape(f"run id {run.run_id}: {len(instances)} tasks x {rollouts}, {len(batch.todo())} to run: {output}"),
            highlight=False, soft_wrap=True,
        )  # fmt: skip

    def on_result(k: int, r) -> None:  # noqa: ANN001
        err.print(_escape(f"eval rollout {k}: {r.instance_id}: {r.outcome}"), highlight=False, soft_wrap=True)

    terminated: list[int] = []
    try:
        try:
            with sigterm_as_interrupt() as terminated:
                result = asyncio.run(run.run(lambda p: LiveDisplay(p, err), announce))
                summary = evaluate_rollouts(
                    instances, output, rollouts, workers, EvalOptions(run_id=run.run_id), on_result, executor
                )
        except BaseException:
            sweep_run(run.run_id)
            raise
    except KeyboardInterrupt:
        how = "terminated" if terminated else "interrupted"
        err.print(_escape(f"{how}: containers removed; finished work is kept in {output} (run again to resume)."))
        raise typer.Exit(signal_exit_code(terminated[0] if terminated else None)) from None
    for line in summary_lines(result.progress, result.folder, run.run_id):
        typer.echo(line)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())) or "nothing evaluated"
    typer.echo(f"evaluated {len(instances)} tasks x {rollouts}: {outcomes} ({output / 'forage.json'})")
    typer.echo(f"export with: cwm-agent forage export {output} -o train.jsonl")
    raise typer.Exit(exit_code(result.progress))


def export_command(
    run_dir: Path = typer.Argument(..., help="Run folder (from `forage run`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Records file to write (JSONL)."),
    only_resolved: bool = typer.Option(False, "--only-resolved", help="Keep only trajectories whose patch resolved."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", min=1, help="Drop trajectories whose final context is over N tokens."
    ),
    dedup: bool = typer.Option(
        False, "--dedup", help="Drop near-duplicate trajectories within a repository (MinHash)."
    ),
    threshold: float = typer.Option(0.9, "--threshold", min=0.01, max=1.0, help="Jaccard similarity for --dedup."),
) -> None:
    """Write one training record per trajectory: CWM dialogue, exact rendered text, outcome, tokens."""
    from cwm_agent.forager.export import export_run

    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder; pass a `forage run` output folder.")
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory; pass a file name (e.g. train.jsonl).")
    summary = export_run(run_dir, output, only_resolved, max_tokens, dedup, threshold)
    reasons = ", ".join(f"{k} {v}" for k, v in summary["dropped_by_reason"].items()) or "none"
    typer.echo(f"{summary['kept']} records written to {output}; dropped {summary['dropped']} ({reasons})")
    typer.echo(f"summary: {output.with_name(output.name + '.summary.json')}")
