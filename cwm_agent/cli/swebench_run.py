"""`cwm-agent swebench run`: the agent over a dataset with a live progress display."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import List, Optional

import typer
from rich.live import Live
from rich.text import Text

from cwm_agent.cli.common import split_ids
from cwm_agent.cli.console import err
from cwm_agent.cli.console import user_error as _fail


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(p) -> Text:
    import time

    return Text.from_markup(
        f"[bold]{p.done}/{p.total}[/bold] done  [green]{p.submitted} submitted[/green]  "
        f"[red]{p.errors} errors[/red]  {p.running} running  {p.tokens:,} tokens generated  "
        f"elapsed {_clock(time.monotonic() - p.started)}  ETA {_clock(p.eta)}"
    )


def run_command(
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="Dataset: .jsonl/.json/.parquet file, or a Hugging Face id."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Run directory (trajectories/, preds.jsonl, results.jsonl)."
    ),
    workers: int = typer.Option(4, "--workers", "-w", min=1, help="Instances run at once (one sandbox each)."),
    model_url: Optional[str] = typer.Option(
        None, "--model-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."
    ),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML config (see `cwm-agent config`)."),
    instance_ids: Optional[List[str]] = typer.Option(
        None, "--instance-ids", help="Only these instances (repeat, or comma-separated)."
    ),
    repos: Optional[List[str]] = typer.Option(None, "--repos", help="Only instances of these repositories."),
    slice_: Optional[str] = typer.Option(None, "--slice", help="A slice of the (filtered) dataset, e.g. 0:50."),
    shuffle_seed: Optional[int] = typer.Option(None, "--shuffle-seed", help="Shuffle the dataset with this seed."),
    rerun_errors: bool = typer.Option(
        False, "--rerun-errors", help="Run again instances that ended in a model, sandbox or image error."
    ),
    allow_pull: bool = typer.Option(False, "--allow-pull", help="Pull missing images from a registry."),
    registry_prefix: Optional[str] = typer.Option(
        None, "--registry-prefix", help="Registry mirror for official images."
    ),
    split: str = typer.Option("test", "--split", help="Split, for Hugging Face datasets."),
) -> None:
    """Run the agent on each instance (N sandboxes at once); resumable: finished instances are skipped."""
    from cwm_agent.agent.config import ConfigError, load_config
    from cwm_agent.model.client import ModelError
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.sandbox.cleanup import sigterm_as_interrupt, sweep_run
    from cwm_agent.swebench.batch import run_batch
    from cwm_agent.swebench.dataset import DatasetError, load_instances

    try:
        config = load_config(config_file, {"model": {"url": model_url} if model_url else {}})
        instances = load_instances(
            dataset,
            instance_ids=split_ids(instance_ids),
            repos=split_ids(repos),
            slice=slice_,
            shuffle_seed=shuffle_seed,
            split=split,
        )
    except (ConfigError, DatasetError) as exc:
        raise _fail(str(exc)) from None
    if not instances:
        raise _fail(f"no instance of {dataset} matches the filters.")
    if output.exists() and not output.is_dir():
        raise _fail(f"--output {output} is a file; pass a directory.")

    live = Live(Text(""), console=err, refresh_per_second=4, transient=False) if err.is_terminal else None
    last_done = -1

    def update(p) -> None:
        nonlocal last_done
        if live is not None:
            live.update(progress_line(p))
        elif p.done != last_done:  # logs: one line per finished instance
            last_done = p.done
            err.print(progress_line(p), highlight=False, soft_wrap=True)

    run_id = uuid.uuid4().hex[:12]

    terminated: list[int] = []
    try:
        if live is not None:
            live.start()
        try:
            with sigterm_as_interrupt() as terminated:
                progress = asyncio.run(
                    run_batch(
                        instances, config, output, workers, rerun_errors, registry_prefix, allow_pull,
                        on_update=update, run_id=run_id,
                    )
                )  # fmt: skip
        except BaseException:
            sweep_run(run_id)
            raise
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        how = "terminated" if terminated else "interrupted"
        err.print(
            f"{how}: containers removed; finished instances are kept in {output} (run again to resume).",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(143 if terminated else 130) from None
    except (ModelError, SandboxError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # the run directory cannot be written (a bad path, permissions, a full disk)
        raise _fail(
            f"cannot write the run directory {output}: {exc.strerror or exc} ({exc.filename or output})."
        ) from None
    finally:
        if live is not None:
            live.stop()
    typer.echo(
        f"{progress.done}/{progress.total} instances done, {progress.submitted} submitted, {progress.errors} errors; "
        f"predictions: {output / 'preds.jsonl'}"
    )
    typer.echo(
        f"evaluate them with: cwm-agent swebench eval --predictions {output / 'preds.jsonl'} "
        f"--dataset {dataset} --output {output / 'eval'}"
    )
