"""No container left behind: live sandboxes are closed on exit, SIGINT, SIGTERM and SIGHUP; `prune` removes
leftovers.

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

signalled = threading.Event()
"""Set by the handlers when a stop signal arrives, before they close anything: work that then sees its
sandbox vanish can tell an interruption from a failure (and record nothing)."""


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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a command and close its sandboxes: Ctrl-C, `kill` or a scheduler, a closed terminal."""


def signal_exit_code(signum: int | None) -> int:
    """The exit status of a command stopped by `signum` (None: Ctrl-C): 130, 143 or 129."""
    return 128 + (signum or signal.SIGINT)


exit_code = signal_exit_code


def track(sandbox: _Closable) -> None:
    """Close `sandbox` when this process exits or gets SIGINT/SIGTERM/SIGHUP (until `untrack`); a sandbox
    started in a worker thread is tracked too, and closed from the main thread's handler."""
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
    """Close live sandboxes on SIGINT/SIGTERM/SIGHUP, then behave as before: the previous handler runs
    (Python's SIGINT handler raises KeyboardInterrupt), and a default SIGTERM or SIGHUP becomes
    SystemExit(143 or 129) so `finally` blocks run. An ignored signal stays ignored. Only the main
    thread may install handlers; elsewhere this only registers the exit hook, so a command that starts
    sandboxes in worker threads calls this first, on the main thread."""
    global _installed, _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(close_all)
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue
        signal.signal(signum, _make_handler(signum, previous))


def _make_handler(signum: int, previous: Any):
    def handler(sig: int, frame: Any) -> None:
        signalled.set()
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


def prune(
    run_id: str | None = None, dead_only: bool = False, client: Any = None, everything: bool = False
) -> list[str]:
    """Remove the project's containers and return their names: run `run_id`'s (live or not, unless
    `dead_only`); with `everything`, every project container on the engine, other users' live runs
    included; with neither, only those whose owner process is gone. An empty `run_id` (an unset shell
    variable) is an error, never "all"."""
    if run_id is not None and not run_id.strip():
        raise SandboxError("the run id is empty: give a run's id, or --all to remove every cwm-agent container")
    if run_id is not None and everything:
        raise SandboxError("give a run id or --all, not both")
    if run_id is None and not everything:
        dead_only = True
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
    if not run_id:
        return  # never "every container"
    try:
        prune(run_id=run_id)
    except Exception:  # noqa: BLE001 - best effort, on the way out
        pass


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """Within the block (around `asyncio.run`), SIGTERM (`kill`, a scheduler's time limit) and SIGHUP (a
    closed terminal, a dropped ssh) take Ctrl-C's path: the run is cancelled, sandboxes close and records
    end as interrupted, instead of the process dying on the spot. Yields a list that gets the signal when
    one came (`signal_exit_code(received[0] if received else None)`: 143 or 129, not 130)."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        signalled.set()
        signal.raise_signal(signal.SIGINT)  # asyncio.run's SIGINT handler cancels the run cleanly

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
