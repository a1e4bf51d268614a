"""`cwm-agent swebench run`: the agent over a dataset (K rollouts per instance) with a live display."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from cwm_agent.cli.common import RELEASE_HELP, SET_HELP, check_output_dir, run_config, split_ids
from cwm_agent.cli.console import err
from cwm_agent.cli.console import user_error as _fail


def log_crash(path: Path) -> Path:
    """Append the exception being handled, with its traceback, to the run's harness log (or a temporary
    file when the run folder can't take it); returns where it went."""
    import tempfile
    import time
    import traceback

    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} CRASH\n{traceback.format_exc()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text)
        return path
    except OSError:
        fd, name = tempfile.mkstemp(prefix="cwm-agent-crash-", suffix=".log")
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return Path(name)


def _say(text: str) -> None:
    err.print(escape(text), highlight=False, soft_wrap=True)


def run_command(
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="Dataset: .jsonl/.json/.parquet file, or a Hugging Face id."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Run directory (run.json, results.jsonl, preds.jsonl, trajectories/)."
    ),
    workers: int = typer.Option(4, "--workers", "-w", min=1, help="Work items run at once (one sandbox each)."),
    model_urls: Optional[List[str]] = typer.Option(
        None,
        "--model-url",
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; repeat for several servers of one model.",
    ),
    model_urls_file: Optional[Path] = typer.Option(
        None, "--model-urls-file", help="A file of model server URLs, one per line (with or instead of --model-url)."
    ),
    executor_name: str = typer.Option(
        "local", "--executor", help="Where work items run: local (this host, -w at once) or ray (a Ray cluster)."
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="The Ray cluster's address HOST:PORT (default: the one this host belongs to)."
    ),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML config (see `cwm-agent config`)."),
    set_options: Optional[List[str]] = typer.Option(None, "-c", "--set", help=SET_HELP),
    cwm_release: Optional[Path] = typer.Option(None, "--cwm-release", help=RELEASE_HELP),
    instance_ids: Optional[List[str]] = typer.Option(
        None, "--instance-ids", help="Only these instances (repeat, or comma-separated)."
    ),
    repos: Optional[List[str]] = typer.Option(None, "--repos", help="Only instances of these repositories."),
    slice_: Optional[str] = typer.Option(None, "--slice", help="A slice of the (filtered) dataset, e.g. 0:50."),
    shuffle_seed: Optional[int] = typer.Option(None, "--shuffle-seed", help="Shuffle the dataset with this seed."),
    rollouts: int = typer.Option(1, "--rollouts", "-k", min=1, help="Independent patch rollouts per instance."),
    test_rollouts: int = typer.Option(
        0, "--test-rollouts", min=0, help="Test-generation rollouts per instance (CWM's test_issue.py episode)."
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Sampling seed of rollout k is SEED + k (default: the config's sampling.seed)."
    ),
    grade_unfinished: bool = typer.Option(
        False,
        "--grade-unfinished",
        help="Put the last submission of episodes ended by a turn, context or time limit in the predictions "
        "(CWM counts them as failed: empty patch).",
    ),
    rerun_errors: bool = typer.Option(
        False, "--rerun-errors", help="Run again work items that ended in a model, sandbox, image or harness error."
    ),
    allow_mixed: bool = typer.Option(
        False,
        "--allow-mixed",
        help="Continue a run folder made with other settings (model, config, dataset, rollouts); "
        "each new result records its settings.",
    ),
    allow_pull: bool = typer.Option(False, "--allow-pull", help="Pull missing images from a registry."),
    registry_prefix: Optional[str] = typer.Option(
        None, "--registry-prefix", help="Registry mirror for official images."
    ),
    split: str = typer.Option("test", "--split", help="Split, for Hugging Face datasets."),
    status_every: float = typer.Option(
        30.0, "--status-every", min=0.1, help="Seconds between status lines when the output is not a terminal."
    ),
) -> None:
    """Run the agent on each instance (N sandboxes at once); resumable: finished work items are skipped.

    Exit status: 0 when every work item ran (whatever the model did), 3 when some errored, 4 when the
    model server went down and the run was stopped, 2 for a mistake in the command, 1 when the harness
    itself failed (traceback in logs/harness.log), 130/143 on Ctrl-C/SIGTERM (run again to resume).
    """

    from cwm_agent.errors import UserError
    from cwm_agent.model.client import ModelError
    from cwm_agent.model.endpoints import endpoint_urls
    from cwm_agent.runs.batch import exit_code
    from cwm_agent.runs.display import LiveDisplay
    from cwm_agent.runs.executor import make_executor
    from cwm_agent.runs.summary import summary_lines
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.sandbox.cleanup import signal_exit_code, sigterm_as_interrupt, sweep_run
    from cwm_agent.swebench.batch import SWEBenchRun, check_unique
    from cwm_agent.swebench.dataset import load_instances

    urls = endpoint_urls(model_urls, model_urls_file)
    config = run_config(config_file, set_options, cwm_release, {"model": {"url": urls[0]} if urls else {}})
    executor = make_executor(executor_name, ray_address)
    filters = {"instance_ids": split_ids(instance_ids), "repos": split_ids(repos), "slice": slice_,
               "shuffle_seed": shuffle_seed}  # fmt: skip
    instances = load_instances(dataset, split=split, **filters)
    if not instances:
        raise _fail(f"no instance of {dataset} matches the filters.")
    check_unique(instances, dataset)
    check_output_dir(output)
    source = str(Path(dataset).resolve()) if Path(dataset).exists() else dataset
    run = SWEBenchRun(
        instances=instances,
        config=config,
        output=output,
        dataset_source=source,
        dataset_split=None if Path(dataset).exists() else split,
        filters={k: v for k, v in filters.items() if v is not None},
        workers=workers,
        rollouts=rollouts,
        test_rollouts=test_rollouts,
        seed=seed,
        grade_unfinished=grade_unfinished,
        rerun_errors=rerun_errors,
        allow_mixed=allow_mixed,
        registry_prefix=registry_prefix,
        allow_pull=allow_pull,
        run_id=uuid.uuid4().hex[:12],
        urls=urls,
        executor=executor,
    )

    def announce(batch) -> None:  # noqa: ANN001
        todo = len(batch.todo())
        _say(
            f"run id {run.run_id}: {len(instances)} instances, {len(batch.items)} work items "
            f"({todo} to run) -> {output}"
        )

    def display(progress):  # noqa: ANN001, ANN202
        return LiveDisplay(progress, err, status_every=status_every)

    terminated: list[int] = []
    try:
        try:
            with sigterm_as_interrupt() as terminated:
                result = asyncio.run(run.run(display, announce))
        except BaseException:
            sweep_run(run.run_id)
            raise
    except KeyboardInterrupt:
        how = "terminated" if terminated else "interrupted"
        _say(f"{how}: containers removed; finished work items are kept in {output} (run again to resume).")
        raise typer.Exit(signal_exit_code(terminated[0] if terminated else None)) from None
    except (ModelError, SandboxError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # the run directory cannot be written (a bad path, permissions, a full disk)
        raise _fail(
            f"cannot write the run directory {output}: {exc.strerror or exc} ({exc.filename or output})."
        ) from None
    except (UserError, typer.Exit):
        raise
    except Exception as exc:  # noqa: BLE001 - a fault of the harness itself: one line here, the traceback logged
        where = log_crash(run.folder.log_path)
        raise _fail(f"unexpected error: {type(exc).__name__}: {exc} (traceback in {where})", 1) from None
    progress = result.progress
    for line in summary_lines(progress, result.folder, run.run_id):
        typer.echo(line)
    submitted = result.submitted()
    preds = result.predictions.get(0)
    if preds is not None:
        others = f" (and {len(result.predictions) - 1} more rollouts in {output / 'preds'})" if rollouts > 1 else ""
        typer.echo(f"predictions: {preds}: {submitted} of {len(instances)} with a patch{others}")
    if submitted:
        typer.echo(
            f"evaluate them with: cwm-agent swebench eval --predictions {preds} --dataset {dataset} "
            f"--output {output / 'eval'}"
        )
    raise typer.Exit(exit_code(progress))
