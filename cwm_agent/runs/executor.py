"""Executors: where the items of a batch run. The driver hands an executor one item at a time
(`submit(item, fn, make_ctx)`) and gets the item's result back in its own process, where it alone
writes the run folder. The executor runs `fn(item, make_ctx(item, place))` wherever it places the
item; nothing `fn` runs knows which executor called it.

- `LocalExecutor`: this process (an async `fn` on the driver's event loop, a plain one in a thread).
- `RayExecutor`: every item is a Ray task on a cluster node that has a Docker engine and the item's
  image; the driver awaits the task's result (`ray.wait` under the hood: Ray object refs are awaitable).

`map_items` runs a list through an executor N at a time (evaluation uses it); `work_runner` adapts an
executor to the batch driver's `runner` seam (`cwm_agent.runs.batch.BatchRun.runner`).

How the Ray executor places work. Each node says how many sandboxes it can hold with a custom
resource, `ray start ... --resources '{"sandbox_slots": N}'`; every item asks for one slot, so a node
never runs more than N items and a node without the resource gets none. Images are per node (each
node has its own Docker engine), so `open` runs a *census* task on every node with slots (pinned to
it) that answers whether its engine is up and which of the run's images it has. While every node with
slots is usable and has the item's image, Ray alone places the item (and retries it alone when its
node is lost: `max_retries`); otherwise the item is pinned (hard node affinity) to the usable node
with its image that has the fewest of our items per slot, so a node whose engine does not answer, or
that lacks the image, gets nothing. An item whose image no node has runs on any usable node and ends
as the `image_error` it would end as locally. Nodes that join after `open` are not counted in.

Files. On a Ray worker an item writes into a temporary folder (`Place.out_dir`): its trajectory is
written there turn by turn, and at the end it is returned as content with every other file the item
wrote; the driver writes them into the run folder at the same relative paths before `submit`
returns. So a run folder is the same whichever executor wrote it, and the nodes need no shared
filesystem (the price: a trajectory crosses the object store once, a few MB for a long episode).

Progress. `submit(..., on_event=f)` gives the item a `Place.report`: each event it reports reaches `f`
in the driver while the item runs (the live display's turns and tokens). On Ray the events go to a
small feed actor on the head node, which the driver drains every half second and once more when the
item ends, so every event of an item is handed over before its result is.

Faults. A node lost mid-item (its raylet gone, its worker killed) fails the Ray task with a system
error; Ray retries it on another node (`max_retries`), and when that is spent or the item was pinned
to the lost node, the driver submits it again on a node still alive (`attempts` in all). One result
per key: a second `submit` of a key still running waits for the first, so no result line is written
twice. The driver killed: Ray ends the tasks it owned, and the run folder's resume rules apply on the
next run. Containers of killed workers carry their owner's pid: `cwm-agent sandbox prune --dead-only`
on that node removes them.

Several model endpoints: an executor gives every item the run's one `Router` (`Place.router`), so
`EndpointPool.rollout` balances new rollouts over the whole run: in process for the local executor,
in one Ray actor (on the head node) for the Ray executor.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cwm_agent.agent.trajectory import Turn
from cwm_agent.errors import UserError
from cwm_agent.model.endpoints import EndpointPool, LoadTable, LocalRouter, Router

log = logging.getLogger(__name__)

SLOT_RESOURCE = "sandbox_slots"
"""The custom resource that counts a Ray node's sandbox slots (`ray start --resources`)."""

EXECUTORS = ("local", "ray")


class ExecutorError(UserError):
    """The executor cannot run the batch (Ray missing, no cluster, no node with sandbox slots)."""


@dataclass
class Place:
    """Where an item runs, as its context factory sees it."""

    out_dir: Path
    """The folder the item writes its files into: the run folder itself (local), or a temporary folder
    whose files the driver copies into the run folder at the same relative paths (Ray)."""
    router: Router
    """The run's shared model-endpoint router (see `cwm_agent.model.endpoints`)."""
    node: str = "local"
    """The host: `local`, or the Ray node id."""
    report: Callable[[Any], None] | None = None
    """Hands a progress event of this item to the driver's `on_event` (None: nobody listens)."""


ItemFn = Callable[[Any, Any], Any]
"""`fn(item, ctx)`: an async function or a plain one, defined at a module's top level (Ray pickles it by name)."""
MakeCtx = Callable[[Any, Place], Any]
"""`make_ctx(item, place) -> ctx`: called where the item runs, once per item; picklable for Ray."""


class Executor(Protocol):
    """Runs items; see the module docstring."""

    name: str
    router: Router
    """The run's model-endpoint router (set by `open`)."""

    @property
    def capacity(self) -> int | None:
        """Items it can run at once (None: as many as it is given)."""

    async def open(self, out_dir: Path, *, endpoints: int = 1, images: Sequence[str] = ()) -> None:
        """Get ready to run items whose files go under `out_dir`, balancing `endpoints` model servers;
        `images`: every image name items may ask for (the Ray executor looks where they are)."""

    async def submit(
        self,
        item: Any,
        fn: ItemFn,
        make_ctx: MakeCtx,
        *,
        key: str,
        images: Sequence[str] | None = None,
        on_event: Callable[[Any], None] | None = None,
    ) -> Any:
        """Run `fn(item, make_ctx(item, place))` and return its result, its files already under `out_dir`.
        `images`: the names any one of which the item's sandbox needs (None: no need). `on_event`: called
        in this process with each event the item hands to `place.report`, all before this returns. An
        exception of `fn` is raised here."""

    async def close(self) -> None: ...


# -- local ---------------------------------------------------------------------------------------


class LocalExecutor:
    """Items in this process: an async `fn` on the caller's event loop, a plain one in a thread."""

    name = "local"

    def __init__(self) -> None:
        self.router: Router = LocalRouter(1)
        self._place: Place | None = None

    @property
    def capacity(self) -> int | None:
        return None

    async def open(self, out_dir: Path, *, endpoints: int = 1, images: Sequence[str] = ()) -> None:
        self.router = LocalRouter(endpoints)
        self._place = Place(out_dir=out_dir, router=self.router)

    async def submit(
        self,
        item: Any,
        fn: ItemFn,
        make_ctx: MakeCtx,
        *,
        key: str,
        images: Sequence[str] | None = None,
        on_event: Callable[[Any], None] | None = None,
    ) -> Any:
        if self._place is None:
            raise RuntimeError("LocalExecutor.submit before open")
        ctx = make_ctx(item, self._place if on_event is None else replace(self._place, report=on_event))
        if inspect.iscoroutinefunction(fn):
            return await fn(item, ctx)
        return await asyncio.to_thread(fn, item, ctx)

    async def close(self) -> None:
        self._place = None


# -- Ray -----------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            "--executor ray needs Ray on this host and on every node: pip install 'cwm-agent[ray]'"
        ) from None
    return ray


@dataclass
class _Shipped:
    """What a Ray task returns: the result and the files the item wrote (relative path -> bytes)."""

    result: Any
    files: dict[str, bytes]
    node: str
    seconds: float


class _RayRouter:
    """A `Router` that forwards to the run's router actor (the counts are fire-and-forget)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def acquire(self, key: str) -> int:
        try:
            return await self.actor.acquire.remote(key)
        except Exception as exc:  # noqa: BLE001 - routing is advice: an unreachable router must not fail the item
            log.warning("the endpoint router did not answer (%s): endpoint 0 for %s", type(exc).__name__, key)
            return 0

    def release(self, key: str) -> None:
        self.actor.release.remote(key)

    def started(self, index: int, key: str | None = None) -> None:
        self.actor.started.remote(index, key)

    def finished(self, index: int, key: str | None = None) -> None:
        self.actor.finished.remote(index, key)


class EventFeed:
    """Run as a Ray actor: the items' progress events (key, event), in the order each item sent them,
    until the driver drains them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def put(self, key: str, event: Any) -> None:
        self.events.append((key, event))

    def drain(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events

    def sync(self) -> None:
        """Answered once every earlier `put` of the caller is in (an actor runs one caller's calls in order)."""


def _run_on_worker(fn: ItemFn, make_ctx: MakeCtx, item: Any, router: Any, feed: Any, key: str | None) -> _Shipped:
    """The body of every Ray task: run the item in a temporary folder, return its result and files."""
    import ray

    started = time.monotonic()
    node = ray.get_runtime_context().get_node_id()
    report = None if key is None else (lambda event: feed.put.remote(key, event))  # fire and forget
    with tempfile.TemporaryDirectory(prefix="cwm-item-") as tmp:
        ctx = make_ctx(item, Place(out_dir=Path(tmp), router=_RayRouter(router), node=node, report=report))
        result = asyncio.run(fn(item, ctx)) if inspect.iscoroutinefunction(fn) else fn(item, ctx)
        if report is not None:
            try:  # every event is in the feed before the result reaches the driver
                ray.get(feed.sync.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - progress is advice: the result matters, not the last events
                pass
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return _Shipped(result=result, files=files, node=node, seconds=time.monotonic() - started)


def _local_cluster_address() -> str | None:
    """The cluster this host belongs to, as `ray.init(address="auto")` finds it: RAY_ADDRESS, else the
    address `ray start` left in Ray's temp folder."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        return Path(tempfile.gettempdir(), "ray", "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def _unreachable(address: str) -> str:
    """Why nothing listens at HOST:PORT ("" when something does, or the address is not of that form)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return ""
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""


def _tagged(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in name else f"{name}:latest"


def _census(wanted: list[str]) -> dict[str, Any]:
    """Runs on one node: its cwm-agent version, whether its Docker engine answers, which `wanted` images it has."""
    import cwm_agent

    answer: dict[str, Any] = {"version": cwm_agent.__version__, "docker": "", "images": []}
    try:
        from cwm_agent.sandbox.images import docker_client

        present: set[str] = set()
        for image in docker_client().images.list():
            present.update(image.tags)
            present.update(image.attrs.get("RepoDigests") or [])
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable engine here
        answer["docker"] = f"{type(exc).__name__}: {exc}"
        return answer
    answer["images"] = [name for name in wanted if _tagged(name) in present]
    return answer


@dataclass
class _Node:
    node_id: str
    slots: float
    images: set[str] = field(default_factory=set)
    in_flight: int = 0
    """Items pinned here and not finished."""


class RayExecutor:
    """Every item a Ray task on a node with a Docker engine and the item's image; see the module docstring.

    `address`: the cluster (`ray start --head` prints it; None: the one this host belongs to).
    `max_retries`: Ray's own retries of a task whose worker or node died; `attempts`: the driver's
    submissions of an item in all (a pinned item is submitted again elsewhere when its node is lost).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = 2, attempts: int = 4) -> None:
        self.address = address
        self.max_retries = max_retries
        self.attempts = attempts
        self.router: Router = LocalRouter(1)
        self.nodes: dict[str, _Node] = {}
        """The usable nodes (found by `open`), by node id."""
        self.finished_on: dict[str, int] = {}
        """Items finished per node id."""
        self.resubmitted = 0
        """Items the driver submitted again after their node was lost."""
        self._ray: Any = None
        self._actor: Any = None
        self._running: dict[str, asyncio.Future] = {}
        self._slot_nodes = 0
        """Alive nodes with sandbox slots at `open` (when all are usable and hold an image, Ray places the item)."""
        self._out_dir: Path | None = None
        self._feed: Any = None
        self._listeners: dict[str, Callable[[Any], None]] = {}
        self._poller: asyncio.Task | None = None
        self._handing_over: asyncio.Lock | None = None

    @property
    def capacity(self) -> int | None:
        return int(sum(n.slots for n in self.nodes.values())) or None

    def connect(self) -> Any:
        """Join the cluster (once per process; call it from the main thread: ray.init sets signal handlers)."""
        ray = _import_ray()
        if not ray.is_initialized():
            address = self.address or _local_cluster_address()
            where = f"at {address}" if address else "on this host"
            hint = (
                f"start one with `ray start --head --resources '{{\"{SLOT_RESOURCE}\": N}}'` and pass its address "
                "with --ray-address HOST:PORT"
            )
            if address is None:
                raise ExecutorError(f"no Ray cluster runs on this host: {hint}")
            # ray.init retries an address where nothing listens for minutes: ask the port first.
            problem = _unreachable(address)
            if problem:
                raise ExecutorError(f"no Ray cluster answers at {address} ({problem}): {hint}")
            try:
                ray.init(
                    address=address,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    configure_logging=False,
                    namespace="cwm-agent",
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExecutorError(f"no Ray cluster {where} ({first}): {hint}") from None
        self._ray = ray
        return ray

    def _alive(self) -> dict[str, float]:
        """Alive nodes with sandbox slots: node id -> slots."""
        out = {}
        for node in self._ray.nodes():
            slots = node.get("Resources", {}).get(SLOT_RESOURCE, 0.0)
            if node.get("Alive") and slots > 0:
                out[node["NodeID"]] = slots
        return out

    def _take_census(self, wanted: list[str]) -> dict[str, _Node]:
        import cwm_agent

        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = self._alive()
        self._slot_nodes = len(alive)
        if not alive:
            raise ExecutorError(
                f"no node of the Ray cluster offers sandbox slots: start nodes with "
                f"`ray start ... --resources '{{\"{SLOT_RESOURCE}\": N}}'` (N sandboxes each)"
            )
        census = ray.remote(num_cpus=0, max_retries=0)(_census)
        refs = {
            node_id: census.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
                wanted
            )
            for node_id in alive
        }
        usable: dict[str, _Node] = {}
        problems: list[str] = []
        for node_id, ref in refs.items():
            try:
                answer = ray.get(ref, timeout=120)
            except Exception as exc:  # noqa: BLE001 - a node that cannot answer gets no work
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                problems.append(f"node {node_id[:12]} did not answer ({first}; is cwm-agent installed there?)")
                log.warning("Ray node %s did not answer the census (%s): it gets no work", node_id, exc)
                continue
            if answer["version"] != cwm_agent.__version__:
                raise ExecutorError(
                    f"Ray node {node_id[:12]} runs cwm-agent {answer['version']} and this host "
                    f"{cwm_agent.__version__}: install the same version on every node"
                )
            if answer["docker"]:
                problems.append(f"node {node_id[:12]}: {answer['docker']}")
                log.warning("Ray node %s has no Docker engine (%s): it gets no work", node_id, answer["docker"])
                continue
            usable[node_id] = _Node(node_id=node_id, slots=alive[node_id], images=set(answer["images"]))
        if not usable:
            raise ExecutorError(
                f"no node of the Ray cluster with sandbox slots can run sandboxes ({problems[0]}): install "
                "cwm-agent and start the Docker engine there (`bash scripts/setup.sh`)"
            )
        return usable

    async def open(self, out_dir: Path, *, endpoints: int = 1, images: Sequence[str] = ()) -> None:
        ray = self._ray or self.connect()

        self._out_dir = out_dir
        # One table for the whole run, on the head node (whose loss is the cluster's); restarted (empty)
        # should it die anyway: the counts are advice, the run goes on.
        self._actor = (
            ray.remote(num_cpus=0)(LoadTable)
            .options(resources={"node:__internal_head__": 0.001}, max_restarts=-1, max_task_retries=-1)
            .remote(endpoints)
        )
        self.router = _RayRouter(self._actor)
        self._feed = (
            ray.remote(num_cpus=0)(EventFeed)
            .options(resources={"node:__internal_head__": 0.001}, max_restarts=-1, max_task_retries=-1)
            .remote()
        )
        self.nodes = await asyncio.to_thread(self._take_census, sorted(set(images)))
        self._task = ray.remote(_run_on_worker)
        self._handing_over = asyncio.Lock()  # made here: each run (open) may be on an event loop of its own
        self._poller = asyncio.create_task(self._poll_events())

    async def _hand_over_events(self) -> None:
        """Drain the feed and call each event's listener (an event of a finished item is dropped); one
        hand-over at a time, so one that ends an item also waits for any in flight."""
        assert self._handing_over is not None, "open() first"
        async with self._handing_over:
            try:
                events = await self._feed.drain.remote()
            except Exception as exc:  # noqa: BLE001 - progress is advice: a lost feed must not fail the run
                log.warning("the progress feed did not answer (%s)", type(exc).__name__)
                return
            for key, event in events:
                listener = self._listeners.get(key)
                if listener is not None:
                    listener(event)

    async def _poll_events(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._hand_over_events()

    def _pin(self, images: Sequence[str] | None) -> _Node | None:
        """The node to pin an item to; None: let Ray place it (every node with slots may run it)."""
        candidates = list(self.nodes.values())
        having = [n for n in candidates if images and n.images.intersection(images)]
        if having:  # else no node has the image: any usable node (it ends as an image_error there)
            candidates = having
        if len(candidates) == self._slot_nodes:
            return None
        return min(candidates, key=lambda n: (n.in_flight / n.slots, n.node_id))

    async def submit(
        self,
        item: Any,
        fn: ItemFn,
        make_ctx: MakeCtx,
        *,
        key: str,
        images: Sequence[str] | None = None,
        on_event: Callable[[Any], None] | None = None,
    ) -> Any:
        if self._actor is None or self._out_dir is None:
            raise RuntimeError("RayExecutor.submit before open")
        running = self._running.get(key)
        if running is not None:  # the same item twice: one run, one result
            return await asyncio.shield(running)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._running[key] = future
        if on_event is not None:
            self._listeners[key] = on_event
        try:
            result = await self._submit(item, fn, make_ctx, key, images, reports=on_event is not None)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a lone submit must not log "never retrieved"
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._running.pop(key, None)
            self._listeners.pop(key, None)

    async def _submit(
        self, item: Any, fn: ItemFn, make_ctx: MakeCtx, key: str, images: Sequence[str] | None, reports: bool
    ) -> Any:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        system_errors = (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OwnerDiedError,
            ray.exceptions.TaskUnschedulableError,
            ray.exceptions.RaySystemError,
        )
        attempt = 0
        while True:
            attempt += 1
            node = self._pin(images)
            options: dict[str, Any] = {
                "num_cpus": 0,
                "resources": {SLOT_RESOURCE: 1},
                "max_retries": self.max_retries,
                "retry_exceptions": False,
            }
            if node is not None:
                node.in_flight += 1
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            ref = self._task.options(**options).remote(
                fn, make_ctx, item, self._actor, self._feed, key if reports else None
            )
            try:
                shipped: _Shipped = await ref
            except ray.exceptions.RayTaskError as exc:  # fn itself raised: raised here, as locally
                raise exc.as_instanceof_cause() from None
            except system_errors as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if attempt >= self.attempts:
                    raise ExecutorError(f"{key}: lost on {attempt} Ray submissions ({first})") from None
                log.warning("%s: Ray submission %d lost (%s); submitting it again", key, attempt, first)
                self.resubmitted += 1
                alive = await asyncio.to_thread(self._alive)
                self.nodes = {k: v for k, v in self.nodes.items() if k in alive}
                if not self.nodes:
                    raise ExecutorError(f"{key}: no usable Ray node is left ({first})") from None
                continue
            except (asyncio.CancelledError, KeyboardInterrupt):
                ray.cancel(ref)  # not forced: the item's own cleanup closes its sandbox
                raise
            finally:
                if node is not None:
                    node.in_flight -= 1
            if reports:
                await self._hand_over_events()  # the item's last events before its result
            for rel, data in shipped.files.items():
                _write_bytes_atomic(self._out_dir / rel, data)
            self.finished_on[shipped.node] = self.finished_on.get(shipped.node, 0) + 1
            return shipped.result

    def table(self) -> dict[str, list[int]] | None:
        """The router's counts (outstanding requests, bound rollouts, rollouts ever assigned per endpoint)."""
        if self._actor is None:
            return None
        return self._ray.get(self._actor.snapshot.remote(), timeout=30)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for actor in (self._actor, self._feed):
            if actor is not None:
                self._ray.kill(actor)
        self._actor = self._feed = None


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """A shipped file into the run folder, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_executor(name: str, ray_address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor `--executor NAME [--ray-address ADDR]` asks for."""
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray-address goes with --executor ray")
        return LocalExecutor()
    if name == "ray":
        executor = RayExecutor(ray_address)
        executor.connect()  # a missing cluster is an error before anything is written
        return executor
    raise ExecutorError(f"--executor {name}: use local or ray")


async def map_items(
    executor: Executor,
    items: Sequence[Any],
    fn: ItemFn,
    make_ctx: MakeCtx,
    on_result: Callable[[Any, Any], None],
    *,
    key: Callable[[Any], str],
    workers: int,
    images: Callable[[Any], Sequence[str] | None] | None = None,
) -> None:
    """Run every item through an opened `executor`, `workers` at a time; `on_result(item, result)` as each
    ends, once per key. An exception of `fn` cancels the items in flight and is raised."""
    queue = list(reversed(items))
    seen: set[str] = set()

    async def worker() -> None:
        while queue:
            item = queue.pop()
            item_key = key(item)
            if item_key in seen:
                continue
            seen.add(item_key)
            result = await executor.submit(item, fn, make_ctx, key=item_key, images=images(item) if images else None)
            on_result(item, result)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(workers, len(queue))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# -- work items (the batch driver's seam) -------------------------------------------------------


def item_images(item: Any) -> list[str] | None:
    """The images a `WorkItem` may run in (None: any node can get one: a fixed image, or pulling allowed)."""
    lookup = getattr(item, "image", None)
    if lookup is None or lookup.allow_pull:
        return None
    return list(lookup.candidates)


@dataclass
class RoutedContext:
    """Everything a work item needs, in a form that crosses to another host: made into an `ItemContext`
    where the item runs, with its model client taken from the run's endpoints for this rollout."""

    config: Any
    """The run's RunConfig."""
    run_id: str
    trajectory: str
    """The trajectory's path relative to the run folder."""
    urls: list[str]
    on_turn: Any = None
    """The driver's live-display callback; dropped on the way to another host."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_turn": None}


class _Routed:
    """`make_ctx` for `routed_work_item`: the place's folder and router into a `RoutedContext`."""

    def __init__(self, ctx: RoutedContext) -> None:
        self.ctx = ctx

    def __call__(self, item: Any, place: Place) -> tuple[RoutedContext, Place]:
        return self.ctx, place


async def routed_work_item(item: Any, routed: tuple[RoutedContext, Place], pool: EndpointPool | None = None) -> Any:
    """`run_work_item` on the endpoint this rollout is routed to (the same for all its requests)."""
    from cwm_agent.runs.work import ItemContext, run_work_item

    ctx, place = routed
    on_turn = ctx.on_turn
    if on_turn is None and place.report is not None:  # on another host: the driver's display hears of each turn
        report = place.report

        def on_turn(item: Any, turn: Turn) -> None:
            report(Turn(index=turn.index, raw="", tokens=turn.tokens))  # what progress counts, not the text

    own = pool is None
    if pool is None:
        pool = EndpointPool(ctx.config.model, ctx.urls, place.router)
    try:
        async with pool.rollout(item.item_id) as client:
            model = ctx.config.model.model_copy(update={"url": client.url})
            item_ctx = ItemContext(
                config=ctx.config.model_copy(update={"model": model}),
                trajectory_path=place.out_dir / ctx.trajectory,
                run_id=ctx.run_id,
                model=client,
                on_turn=on_turn,
            )
            return await run_work_item(item, item_ctx)
    finally:
        if own:
            await pool.aclose()


def work_runner(executor: Executor, urls: Sequence[str], out_dir: Path) -> Callable[[Any, Any], Any]:
    """The batch driver's `runner(item, ctx)` for `executor`: the item runs where the executor puts it,
    on the endpoint of `urls` its rollout is routed to. Call `executor.open` first."""
    urls = list(urls)
    local_pool: EndpointPool | None = None

    async def runner(item: Any, ctx: Any) -> Any:
        nonlocal local_pool
        try:
            trajectory = ctx.trajectory_path.relative_to(out_dir).as_posix()
        except ValueError:
            raise RuntimeError(f"{ctx.trajectory_path} is outside the run folder {out_dir}") from None
        routed = RoutedContext(config=ctx.config, run_id=ctx.run_id, trajectory=trajectory, urls=urls)
        if isinstance(executor, LocalExecutor):
            # In process: one pool (one client per server) shared by every rollout, the live display kept.
            if local_pool is None:
                local_pool = EndpointPool(ctx.config.model, urls, executor.router)
            routed = replace(routed, on_turn=ctx.on_turn)
            return await routed_work_item(item, (routed, Place(out_dir=out_dir, router=executor.router)), local_pool)
        on_turn = ctx.on_turn
        return await executor.submit(
            item,
            routed_work_item,
            _Routed(routed),
            key=item.item_id,
            images=item_images(item),
            on_event=None if on_turn is None else (lambda turn: on_turn(item, turn)),
        )

    return runner


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "MakeCtx",
    "Place",
    "RayExecutor",
    "SLOT_RESOURCE",
    "make_executor",
    "map_items",
    "work_runner",
]
