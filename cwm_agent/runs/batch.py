"""The driver of a batch run: work items through an executor, results into the run folder.

Generic: a use of it (SWE-bench, task collection, test-time scaling) makes its own `WorkItem`s and
may add what to write per finished item (`on_record`) and at the end (`on_finish`). Only the
driver writes the folder; the items run in `runner` (the local in-process `run_work_item` by
default, any executor's function of the same shape otherwise).

Exit codes of a batch command (`exit_code`): 0 when every item ran to an ending of its own
(whatever the model did), `EXIT_ERRORS` when some item errored (image, sandbox, model, harness),
`EXIT_MODEL_DOWN` when the model server went down and the batch was stopped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from cwm_agent.agent.config import RunConfig
from cwm_agent.model.client import ModelClient, ModelError
from cwm_agent.runs.display import LiveDisplay
from cwm_agent.runs.folder import Appender, RunFolder, harness_logger, write_if_changed
from cwm_agent.runs.progress import RunProgress
from cwm_agent.runs.work import ItemContext, ItemRecord, ItemResult, WorkItem, is_model_down, run_work_item

log = logging.getLogger(__name__)

EXIT_ERRORS = 3
EXIT_MODEL_DOWN = 4

Runner = Callable[[WorkItem, ItemContext], Awaitable[ItemResult]]


def exit_code(progress: RunProgress) -> int:
    if progress.stopped:
        return EXIT_MODEL_DOWN
    return EXIT_ERRORS if progress.errors else 0


def round_robin(items: list[WorkItem]) -> list[WorkItem]:
    """Items ordered round by round: every instance's rollout 0 (patch, then test), then every rollout 1, ...

    So the model and the sandboxes work on many instances at once, not on all rollouts of one first.
    """
    order = {item.instance_id: i for i, item in reversed(list(enumerate(items)))}
    kinds = {"patch": 0, "test": 1}
    return sorted(items, key=lambda it: (it.rollout, kinds.get(it.kind, 2), order[it.instance_id]))


def pending(items: list[WorkItem], results: dict[str, ItemRecord], rerun_errors: bool) -> list[WorkItem]:
    todo = []
    for item in items:
        record = results.get(item.item_id)
        if record is None or (rerun_errors and record.errored):
            todo.append(item)
    return todo


@dataclass
class BatchRun:
    """One process's run of `items` into `folder` (opened and locked by the caller)."""

    folder: RunFolder
    items: list[WorkItem]
    """Every item of the run in the run's order (finished ones included)."""
    config: RunConfig
    run_id: str
    workers: int = 4
    rerun_errors: bool = False
    settings: dict[str, Any] | None = None
    """Recorded on every result line (a run continued with `--allow-mixed`)."""
    on_record: Callable[[ItemRecord], None] | None = None
    """Called after each result line is written (e.g. to append a prediction)."""
    on_finish: Callable[[list[ItemRecord]], None] | None = None
    """Called with every record in the run's order after results.jsonl is rewritten (e.g. to write preds)."""
    runner: Runner = run_work_item
    server_check: Callable[[], Awaitable[str | None]] | None = None
    """After an item's model error: None when the model server(s) still answer, else why not (the batch
    then stops). Default: ask the shared client's server, when there is one."""
    progress: RunProgress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = RunProgress(total=len(self.items))

    def results(self) -> dict[str, ItemRecord]:
        return self.folder.read_results()

    def todo(self) -> list[WorkItem]:
        return round_robin(pending(self.items, self.results(), self.rerun_errors))

    async def run(
        self, model: ModelClient | None, display_factory: Callable[[RunProgress], LiveDisplay] | None
    ) -> RunProgress:
        """Run every pending item; returns the counters (`progress.stopped` says why it stopped early)."""
        results = self.results()
        todo = self.todo()
        todo_ids = {item.item_id for item in todo}
        for item in self.items:
            record = results.get(item.item_id)
            if record is not None and item.item_id not in todo_ids:
                self.progress.count(record, here=False)
        restore = harness_logger(self.folder)[1]
        try:
            if todo:
                appender = Appender(self.folder.results_path, [r.model_dump_json() for r in results.values()])
                try:
                    display = display_factory(self.progress) if display_factory else None
                    if display is None:
                        await self._run(todo, model, None, appender)
                    else:
                        async with display:
                            await self._run(todo, model, display, appender)
                finally:
                    appender.close()
            self.finish()
        finally:
            restore()
        return self.progress

    def finish(self) -> list[ItemRecord]:
        """Rewrite results.jsonl in the run's order, one line per item (the last record of each wins);
        items of other selections that ran into this folder are kept after them."""
        results = self.results()
        ids = [item.item_id for item in self.items if item.item_id in results]
        known = set(ids)
        ids += [k for k in results if k not in known]
        ordered = [results[k] for k in ids]
        if self.folder.results_path.exists() or ordered:
            write_if_changed(self.folder.results_path, "".join(r.model_dump_json() + "\n" for r in ordered))
        if self.on_finish is not None:
            self.on_finish(ordered)
        return ordered

    async def _run(
        self, todo: list[WorkItem], model: ModelClient | None, display: LiveDisplay | None, appender: Appender
    ) -> None:
        queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)
        progress = self.progress
        stop = asyncio.Event()

        def on_turn(item: WorkItem, turn: Any) -> None:
            progress.turn(item.item_id, turn)

        async def one(item: WorkItem) -> None:
            ctx = ItemContext(
                config=self.config,
                trajectory_path=self.folder.trajectory(item.item_id),
                run_id=self.run_id,
                model=model,
                on_turn=on_turn,
            )
            progress.start_item(item.item_id)
            try:
                result = await self.runner(item, ctx)
            except (asyncio.CancelledError, KeyboardInterrupt):
                progress.finish_uncounted(item.item_id)
                raise
            except Exception as exc:
                progress.finish_uncounted(item.item_id)
                if is_model_down(exc):
                    self._stop(f"the model server is down: {exc}", stop, display)
                    return
                raise
            record = result.record
            if self.settings is not None:
                record = record.model_copy(update={"settings": self.settings})
            if result.error_trace:
                log.error("%s: %s\n%s", item.item_id, record.detail, result.error_trace.rstrip())
            if record.status == "model_error":
                gone = await self._server_gone(model)
                if gone is not None:
                    # The item ran into a dead server: not the item's result, and no further item may start.
                    progress.finish_uncounted(item.item_id)
                    self._stop(f"{gone} (the item's error: {record.detail})", stop, display)
                    return
            appender.append(record)
            if self.on_record is not None:
                self.on_record(record)
            progress.count(record)
            if display is not None:
                display.item_done(record)

        async def worker() -> None:
            while not stop.is_set() and not queue.empty():
                await one(queue.get_nowait())

        tasks = {asyncio.create_task(worker()) for _ in range(max(1, min(self.workers, len(todo))))}
        stopper = asyncio.create_task(stop.wait())
        failure: BaseException | None = None
        try:
            running = set(tasks)
            while running and not stop.is_set() and failure is None:
                done, _ = await asyncio.wait(running | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    running.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        failure = task.exception()
        finally:
            # A stop (or a failure) cancels the items in flight: each records `interrupted` in its
            # trajectory and removes its sandbox; none gets a result line, so a resume runs it again.
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        if failure is not None:
            raise failure

    async def _server_gone(self, model: ModelClient | None) -> str | None:
        if self.server_check is not None:
            return await self.server_check()
        return await server_gone(model) if model is not None else None

    def _stop(self, reason: str, stop: asyncio.Event, display: LiveDisplay | None) -> None:
        if self.progress.stopped is None:
            self.progress.stopped = reason
            log.error("batch stopped: %s", reason)
            if display is not None:
                display.note(f"stopping: {reason}")
        stop.set()


async def server_gone(model: ModelClient) -> str | None:
    """None when `model`'s server answers, else why it counts as gone."""
    try:
        await model.check()
    except ModelError as exc:
        return f"the model server at {model.url} stopped answering: {exc}"
    return None
