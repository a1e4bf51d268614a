"""`swebench run`: the agent over many instances, N sandboxes at a time, resumable.

Output directory:
- `trajectories/<instance_id>.jsonl`: one trajectory per instance (the shared pipeline's file).
- `results.jsonl`: one line per finished instance: exit status, error, turns, tokens, seconds.
- `preds.jsonl`: the official predictions format (instance_id, model_name_or_path, model_patch).

Both JSONL files are appended (and fsynced) as instances finish, so a killed run loses at most
the instances in flight. A re-run reads them back (a line cut by `kill -9` is dropped), skips
finished instances, re-runs errored ones only with `rerun_errors`, and at the end rewrites both
files in dataset order, one line per instance: the same final files however often it was resumed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from cwm_agent.agent.config import RunConfig
from cwm_agent.agent.files import write_text_atomic
from cwm_agent.agent.run import run_task, size_thread_pool
from cwm_agent.agent.trajectory import ExitStatus
from cwm_agent.model.client import ModelClient
from cwm_agent.sandbox.base import SandboxError
from cwm_agent.sandbox.images import docker_client
from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.images import resolve_image
from cwm_agent.swebench.tasks import instance_task

log = logging.getLogger(__name__)

ERROR_STATUSES = {ExitStatus.MODEL_ERROR.value, ExitStatus.SANDBOX_ERROR.value, "image_error", "harness_error"}
"""Outcomes that say nothing about the model's ability: re-run on request."""


class InstanceRun(BaseModel):
    """One line of results.jsonl."""

    instance_id: str
    status: str
    """An ExitStatus value, or `image_error` when no image could be found."""
    detail: str = ""
    submitted: bool = False
    turns: int = 0
    context_tokens: int = 0
    completion_tokens: int = 0
    elapsed: float = 0.0

    @property
    def errored(self) -> bool:
        return self.status in ERROR_STATUSES


class Prediction(BaseModel):
    instance_id: str
    model_name_or_path: str
    model_patch: str


@dataclass
class BatchProgress:
    """Counters for the live display; `on_update` is called after every change."""

    total: int
    done: int = 0
    submitted: int = 0
    errors: int = 0
    running: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def eta(self) -> float | None:
        if self.done == 0:
            return None
        return (time.monotonic() - self.started) / self.done * (self.total - self.done)


def _read_jsonl(path: Path, model: type[BaseModel]) -> dict[str, BaseModel]:
    """Records by instance id (the last line wins); a torn last line from a kill is ignored."""
    records: dict[str, BaseModel] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = model.model_validate_json(line)
        except ValueError:
            continue
        records[record.instance_id] = record
    return records


class _Appender:
    """Appends whole lines and fsyncs; repairs a torn last line first so appends start clean."""

    def __init__(self, path: Path, existing: dict[str, BaseModel]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(r.model_dump_json() + "\n" for r in existing.values()))
        self._fh = path.open("a", encoding="utf-8")

    def append(self, record: BaseModel) -> None:
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def pending_instances(
    instances: list[SWEBenchInstance], results: dict[str, BaseModel], rerun_errors: bool
) -> list[SWEBenchInstance]:
    todo = []
    for instance in instances:
        record = results.get(instance.instance_id)
        if record is None or (rerun_errors and record.errored):
            todo.append(instance)
    return todo


async def run_batch(
    instances: list[SWEBenchInstance],
    config: RunConfig,
    output_dir: Path,
    workers: int,
    rerun_errors: bool = False,
    registry_prefix: str | None = None,
    allow_pull: bool = False,
    on_update: Callable[[BatchProgress], None] | None = None,
    run_id: str | None = None,
) -> BatchProgress:
    """Run the agent on every instance not finished yet; returns the final counters.

    `run_id` labels every container of this run (generated when None), so that a caller can
    remove them after an interruption with `cwm_agent.sandbox.cleanup.prune(run_id=...)`."""
    results_path, preds_path = output_dir / "results.jsonl", output_dir / "preds.jsonl"
    results = _read_jsonl(results_path, InstanceRun)
    preds = _read_jsonl(preds_path, Prediction)
    # A prediction without its result line was torn between the two writes: run it again.
    preds = {k: v for k, v in preds.items() if k in results}
    todo = pending_instances(instances, results, rerun_errors)
    todo_ids = {i.instance_id for i in todo}
    progress = BatchProgress(total=len(instances), done=len(instances) - len(todo))
    for instance in instances:
        record = results.get(instance.instance_id)
        if record is not None and instance.instance_id not in todo_ids:
            progress.submitted += record.submitted
            progress.errors += record.errored
            progress.tokens += record.completion_tokens
    notify = on_update or (lambda p: None)
    if not todo:  # nothing to run: no model server needed, only the final rewrite (a kill may have cut it short)
        if results_path.exists():
            _finalize(instances, results_path, preds_path)
        notify(progress)
        return progress
    queue: asyncio.Queue[SWEBenchInstance] = asyncio.Queue()
    for instance in todo:
        queue.put_nowait(instance)

    size_thread_pool(workers)
    async with ModelClient(config.model) as model:
        # Asked even when the config names the model: an unreachable server fails here in seconds,
        # before any file is written, not once per instance after minutes of retries.
        model_name = await model.check()
        config = config.model_copy(update={"model": config.model.model_copy(update={"model": model_name})})
        client = docker_client()
        run_id = run_id or uuid.uuid4().hex[:12]
        results_out, preds_out = _Appender(results_path, results), _Appender(preds_path, preds)
        notify(progress)

        async def one(instance: SWEBenchInstance) -> None:
            trajectory = output_dir / "trajectories" / f"{instance.instance_id}.jsonl"
            try:
                image = await asyncio.to_thread(resolve_image, instance, client, registry_prefix, allow_pull)
            except SandboxError as exc:
                record = InstanceRun(instance_id=instance.instance_id, status="image_error", detail=str(exc))
                patch, outcome = "", None
            else:
                try:
                    outcome = await run_task(instance_task(instance, image), config, model, trajectory, run_id)
                except Exception as exc:  # noqa: BLE001 - one instance's surprise must not end a six-hour run
                    log.exception("%s: unexpected error", instance.instance_id)
                    outcome = None
                    record = InstanceRun(
                        instance_id=instance.instance_id, status="harness_error", detail=f"{type(exc).__name__}: {exc}"
                    )
                    patch = ""
            if outcome is not None:
                record = InstanceRun(
                    instance_id=instance.instance_id,
                    status=outcome.status.value,
                    detail=outcome.detail,
                    submitted=outcome.patch is not None,
                    turns=outcome.turns,
                    context_tokens=outcome.context_tokens,
                    completion_tokens=outcome.completion_tokens,
                    elapsed=round(outcome.elapsed, 3),
                )
                patch = outcome.patch or ""
            # The prediction first: a result line is the mark of a finished instance.
            preds_out.append(
                Prediction(instance_id=instance.instance_id, model_name_or_path=model_name, model_patch=patch)
            )
            results_out.append(record)
            progress.done += 1
            progress.submitted += record.submitted
            progress.errors += record.errored
            progress.tokens += record.completion_tokens

        async def worker() -> None:
            while not queue.empty():
                instance = queue.get_nowait()
                progress.running += 1
                notify(progress)
                try:
                    await one(instance)
                finally:
                    progress.running -= 1
                    notify(progress)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, workers))))
        finally:
            results_out.close()
            preds_out.close()

    _finalize(instances, results_path, preds_path)
    return progress


def _finalize(instances: list[SWEBenchInstance], results_path: Path, preds_path: Path) -> None:
    """Rewrite both files in dataset order, one line per instance (the last record of each wins)."""
    results = _read_jsonl(results_path, InstanceRun)
    preds = _read_jsonl(preds_path, Prediction)
    order = [i.instance_id for i in instances if i.instance_id in results]
    ordered = set(order)
    extra = [k for k in results if k not in ordered]  # instances filtered out of this run: kept
    _write_if_changed(results_path, "".join(results[k].model_dump_json() + "\n" for k in order + extra))
    _write_if_changed(preds_path, "".join(preds[k].model_dump_json() + "\n" for k in order + extra if k in preds))


def _write_if_changed(path: Path, text: str) -> None:
    """A resume with nothing new leaves the files as they were (contents and times)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
