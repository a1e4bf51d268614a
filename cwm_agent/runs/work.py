"""One work item of a batch run, and the one function that runs it.

The seam between a batch (the driver, which alone writes the run folder) and an executor (the
local in-process pool, or Ray workers on other hosts): the driver turns its dataset into
`WorkItem`s, an executor calls `run_work_item(item, ctx)` for each and hands the `ItemResult`
back. Everything here is plain data (pydantic), so an item and its result cross process and
host boundaries as JSON; the context holds the live things (model client, callbacks) that an
executor makes on its side.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, model_validator

from cwm_agent.agent.config import RunConfig
from cwm_agent.agent.record import EpisodeRecord, TokenTotals
from cwm_agent.agent.run import run_task
from cwm_agent.agent.task import Task
from cwm_agent.model.client import ModelClient, ModelDownError
from cwm_agent.sandbox.base import ImageNotFoundError, SandboxError

log = logging.getLogger(__name__)

Kind = Literal["patch", "test"]

ERROR_STATUSES = frozenset({"model_error", "sandbox_error", "image_error", "harness_error"})
"""Endings that say nothing about the model's ability: the work item did not run to an ending of
the episode's own. A run whose items all avoided these exits 0, whatever the model did."""


def item_id_for(instance_id: str, kind: Kind = "patch", rollout: int = 0) -> str:
    """The instance id for (patch, rollout 0), so a K=1 run looks as it always did; else `ID.KIND-K`."""
    if kind == "patch" and rollout == 0:
        return instance_id
    return f"{instance_id}.{kind}-{rollout}"


class ImageLookup(BaseModel):
    """Where the item's sandbox image may come from, tried where the item runs (an executor's host)."""

    candidates: list[str]
    """Image names to look for among the engine's local images, in order; the first found is used."""
    pullable: list[str] = Field(default_factory=list)
    """Names to pull, in order, when none is present and pulling is allowed."""
    allow_pull: bool = False
    how_to_get: str = ""
    """The end of the error when none is found: what the user runs to get one."""


class WorkItem(BaseModel):
    """One episode to run: an instance, the kind of episode, and which rollout of it."""

    item_id: str
    """Unique within a run; names the trajectory file (see `item_id_for`)."""
    instance_id: str
    kind: Kind = "patch"
    rollout: int = 0
    """0-based index among the item's instance's rollouts of this kind."""
    seed: int | None = None
    """The sampling seed of this rollout (the run's `--seed` + rollout), None: the config's."""
    task: Task
    """The agent's task; its `image` is None when `image` says where to find one."""
    image: ImageLookup | None = None


class ItemRecord(BaseModel):
    """One line of results.jsonl: how one work item ended."""

    instance_id: str
    kind: Kind = "patch"
    rollout: int = 0
    item_id: str
    status: str
    """An ExitStatus value, or `image_error` / `harness_error` (the harness failed around the episode)."""
    graded: bool = False
    """CWM would grade it: the episode ended after a successful submission."""
    detail: str = ""
    submission: str | None = None
    """The last accepted submission, kept whether graded or not."""
    turns: int = 0
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    elapsed: float = 0.0
    endpoint: str = ""
    """The model server's URL that served this item."""
    settings: dict[str, Any] | None = None
    """The run's settings when this item ran, recorded only in a run continued with `--allow-mixed`."""

    @model_validator(mode="before")
    @classmethod
    def _older_lines(cls, data: Any) -> Any:
        """A line written before work items (one per instance) reads as (patch, rollout 0)."""
        if isinstance(data, dict) and "item_id" not in data and "instance_id" in data:
            data = {
                **data,
                "item_id": item_id_for(data["instance_id"], data.get("kind", "patch"), data.get("rollout", 0)),
            }
            if "graded" not in data:
                data["graded"] = bool(data.get("submitted")) and data.get("status") == "submitted"
        return data

    @property
    def errored(self) -> bool:
        return self.status in ERROR_STATUSES

    def model_dump_json(self, **kwargs: Any) -> str:
        """The results line: `settings` only when there are some (a run continued with --allow-mixed)."""
        if self.settings is None and "exclude" not in kwargs:
            kwargs["exclude"] = {"settings"}
        return super().model_dump_json(**kwargs)


class ItemResult(BaseModel):
    """What an executor hands back to the driver for one work item."""

    record: ItemRecord
    final_diff: str = ""
    """The harness's own diff of the working tree at the end (not a submission)."""
    error_trace: str | None = None
    """The full traceback of an unexpected error (status `harness_error`), for the driver's log."""


TurnCallback = Callable[[WorkItem, Any], None]
"""`on_turn(item, turn)`: called after every recorded turn of the item's episode (an `agent.trajectory.Turn`)."""


@dataclass
class ItemContext:
    """What running an item needs besides the item: made by the executor, never serialised."""

    config: RunConfig
    """The run's config (the model id filled in); an item's seed overrides `sampling.seed`."""
    trajectory_path: Path
    """Where this item's trajectory goes (on a shared filesystem, or copied back by the executor)."""
    run_id: str
    """Labels every container of the run (for `sandbox prune --run-id`)."""
    model: ModelClient | None = None
    """A shared, open client; None: one is opened for this item from `config.model`."""
    on_turn: TurnCallback | None = None
    docker: Any = field(default=None, repr=False)
    """A docker client for image lookups; None: one is made when needed."""


def is_model_down(exc: BaseException) -> bool:
    """The model server is gone for good (the client's circuit breaker opened): stop the whole batch."""
    return isinstance(exc, ModelDownError)


def find_image(lookup: ImageLookup, docker_client: Any, instance_id: str) -> str:
    """The first of `lookup.candidates` present on the engine, else the first that pulls (when allowed).

    Raises ImageNotFoundError naming every name tried and `lookup.how_to_get`.
    """
    import docker.errors

    for name in lookup.candidates:
        try:
            docker_client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code == 400:  # not a valid reference (e.g. a dataset row's `image`): no such image
                continue
            raise SandboxError(f"cannot look up image {name}: {exc.explanation or exc}") from None
        except docker.errors.DockerException as exc:  # the engine did not answer (a timeout under load)
            raise SandboxError(f"cannot look up image {name}: {exc}") from None
    problems = []
    if lookup.allow_pull:
        for name in lookup.pullable:
            try:
                docker_client.images.pull(name)
                return name
            except Exception as exc:  # noqa: BLE001 - each failure is reported in the error below
                problems.append(f"{name}: {getattr(exc, 'explanation', None) or exc}")
    pulled = f" (pull failed: {'; '.join(problems)})" if problems else ""
    how = f" To get one, {lookup.how_to_get}." if lookup.how_to_get else ""
    raise ImageNotFoundError(f"No image for {instance_id}: tried {', '.join(lookup.candidates)}{pulled}.{how}")


def _record_from(item: WorkItem, episode: EpisodeRecord, endpoint: str) -> ItemRecord:
    """The results line of a finished episode: the episode's record (less what the run folder keeps
    elsewhere: the diff, the trajectory's path) with the work item's ids."""
    fields = episode.model_dump(mode="json", exclude={"task_id", "final_diff", "base_commit", "trajectory"})
    return ItemRecord(**fields, **_ids(item), endpoint=endpoint)


def _ids(item: WorkItem) -> dict[str, Any]:
    return {"instance_id": item.instance_id, "kind": item.kind, "rollout": item.rollout, "item_id": item.item_id}


async def run_work_item(item: WorkItem, ctx: ItemContext) -> ItemResult:
    """Run one work item to its ending; never raises for a failure of the item itself.

    A missing image is `image_error`, an unexpected exception `harness_error` (with its traceback in
    `error_trace`); both are results, so one item's surprise never ends a long run. Raises only on
    cancellation (Ctrl-C) and when the model server is down for good (`is_model_down`), which must stop
    the batch.
    """
    config = ctx.config
    if item.seed is not None:
        config = config.model_copy(update={"sampling": config.sampling.model_copy(update={"seed": item.seed})})
    endpoint = config.model.url

    def failed(status: str, detail: str, trace: str | None = None) -> ItemResult:
        record = ItemRecord(**_ids(item), status=status, detail=detail, endpoint=endpoint)
        return ItemResult(record=record, error_trace=trace)

    task = item.task
    if task.kind != item.kind:
        task = task.model_copy(update={"kind": item.kind})
    if item.image is not None and task.image is None:
        docker_client = ctx.docker
        try:
            if docker_client is None:
                from cwm_agent.sandbox.images import docker_client as make_docker_client

                docker_client = await asyncio.to_thread(make_docker_client)
            image = await asyncio.to_thread(find_image, item.image, docker_client, item.instance_id)
        except SandboxError as exc:
            return failed("image_error", str(exc))
        task = task.model_copy(update={"image": image})

    def on_turn(turn: Any) -> None:
        if ctx.on_turn is not None:
            ctx.on_turn(item, turn)

    kwargs: dict[str, Any] = {"run_id": ctx.run_id, "on_turn": on_turn}
    try:
        if ctx.model is not None:
            outcome = await run_task(task, config, ctx.model, ctx.trajectory_path, **kwargs)
        else:
            async with ModelClient(config.model) as model:
                outcome = await run_task(task, config, model, ctx.trajectory_path, **kwargs)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if is_model_down(exc):
            raise
        log.debug("%s: unexpected error", item.item_id, exc_info=True)
        return failed("harness_error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return ItemResult(record=_record_from(item, outcome, endpoint), final_diff=outcome.final_diff)
