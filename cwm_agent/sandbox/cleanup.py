"""No container left behind: live sandboxes are closed on exit, SIGINT and SIGTERM; `prune` removes leftovers.

A process killed with SIGKILL cannot clean up; its containers keep their labels (project,
run id, owner pid and the owner's start time) so `prune` can find them afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Protocol

import docker.errors

from cwm_agent.sandbox.base import OWNER_PID_LABEL, PROJECT_LABEL, RUN_ID_LABEL, SandboxError
from cwm_agent.sandbox.images import docker_client

log = logging.getLogger(__name__)

PROJECT_VALUE = "cwm-agent"
"""Value of PROJECT_LABEL on every container the project starts."""
OWNER_HOST_LABEL = "io.cwm-agent.owner-host"
"""Host name of the process that started the container (pids only mean something there)."""
OWNER_START_LABEL = "io.cwm-agent.owner-start"
"""Start time (clock ticks since boot) of the owner process, so a reused pid is not taken for it."""


class _Closable(Protocol):
    def close(self) -> None: ...


_live: dict[int, _Closable] = {}
# No lock: a single dict store, pop or copy is atomic under the GIL, and a lock would deadlock
# when the signal handler (main thread) interrupts a holder and then waits on closing threads.
_installed = False
_atexit_registered = False


def process_start_ticks(pid: int) -> str:
    """Start time of process `pid` from /proc (clock ticks since boot), or "" when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def owner_labels() -> dict[str, str]:
    """Labels naming this process as a container's owner."""
    pid = os.getpid()
    return {
        PROJECT_LABEL: PROJECT_VALUE,
        OWNER_PID_LABEL: str(pid),
        OWNER_HOST_LABEL: socket.gethostname(),
        OWNER_START_LABEL: process_start_ticks(pid),
    }


def track(sandbox: _Closable) -> None:
    """Close `sandbox` when this process exits or gets SIGINT/SIGTERM (until `untrack`)."""
    _live[id(sandbox)] = sandbox
    install_handlers()


def untrack(sandbox: _Closable) -> None:
    _live.pop(id(sandbox), None)


def close_all() -> None:
    """Close every live sandbox of this process (never raises)."""
    live = list(_live.copy().values())
    if not live:
        return

    def close(sandbox) -> None:
        try:
            sandbox.close()
        except Exception as exc:  # cleanup must go on for the others
            log.warning("closing %r failed: %s", sandbox, exc)

    # Each removal waits on the engine (~0.3 s): side by side, 64 rollouts stop in about a second.
    try:
        with ThreadPoolExecutor(max_workers=min(16, len(live)), thread_name_prefix="cwm-cleanup") as pool:
            list(pool.map(close, live))
    except RuntimeError:  # at interpreter exit (atexit) no new threads may start: one by one
        for sandbox in live:
            close(sandbox)


def install_handlers() -> None:
    """Close live sandboxes on SIGINT/SIGTERM, then behave as before: the previous handler runs
    (Python's SIGINT handler raises KeyboardInterrupt), and a default SIGTERM becomes
    SystemExit(143) so `finally` blocks run. An ignored signal stays ignored. Only the main
    thread may install handlers; elsewhere this only registers the exit hook."""
    global _installed, _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(close_all)
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue
        signal.signal(signum, _make_handler(signum, previous))


def _make_handler(signum: int, previous: Any):
    def handler(sig: int, frame: Any) -> None:
        close_all()
        if callable(previous):
            previous(sig, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + sig)

    return handler


def _owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process that started a container still runs; unknown counts as alive."""
    if labels.get(OWNER_HOST_LABEL, socket.gethostname()) != socket.gethostname():
        return True
    try:
        pid = int(labels.get(OWNER_PID_LABEL, ""))
    except ValueError:
        return True
    start = process_start_ticks(pid)
    if not start:
        return False
    expected = labels.get(OWNER_START_LABEL, "")
    return not expected or expected == start


def prune(run_id: str | None = None, dead_only: bool = False, client: Any = None) -> list[str]:
    """Remove the project's containers (only run `run_id`'s when given; only those whose owner
    process is gone when `dead_only`). Returns the removed containers' names."""
    client = client or docker_client()
    filters = [f"{PROJECT_LABEL}={PROJECT_VALUE}"]
    if run_id:
        filters.append(f"{RUN_ID_LABEL}={run_id}")
    removed = []
    # Containers may vanish while we work (their run closing them, another prune).
    for container in client.containers.list(all=True, filters={"label": filters}, ignore_removed=True):
        if dead_only and _owner_alive(container.labels):
            continue
        try:
            container.remove(force=True)
            removed.append(container.name)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # 409: someone else is removing it right now
                raise SandboxError(f"Could not remove container {container.name}: {exc.explanation or exc}") from exc
    return removed


def sweep_run(run_id: str) -> None:
    """After an interruption, remove whatever containers of run `run_id` are left (never raises).

    Each sandbox removes its own container when closed; this is the last word of a command that
    was interrupted, once its worker threads have ended. An engine that does not answer (maybe
    the very error being reported) leaves nothing to do here: `cwm-agent sandbox prune` remains.
    """
    try:
        prune(run_id=run_id)
    except Exception:  # noqa: BLE001 - best effort, on the way out
        pass


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """Within the block (around `asyncio.run`), SIGTERM (`kill`, a scheduler's time limit) takes
    Ctrl-C's path: the run is cancelled, sandboxes close and records end as interrupted, instead of
    the process dying on the spot. Yields a list that gets the signal when one came (so the caller
    can exit 143, not 130)."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        signal.raise_signal(signal.SIGINT)  # asyncio.run's SIGINT handler cancels the run cleanly

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
