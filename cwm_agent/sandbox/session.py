"""One persistent bash session driven over one byte stream, for every backend.

The backend gives us a `ShellHost`: a way to start `bash` with its stdin and stdout joined
to a byte stream (a `docker exec -i` socket, or a local pipe), and a way to run a short
helper script beside it (to end a session that no longer answers). Everything else lives here:

- Each command is sent inside a quoted heredoc, read into a variable and `eval`ed at the
  top level of the shell, so cwd, variables, functions and aliases persist. Its stdin is
  /dev/null; stderr was joined to stdout when the shell started, so output comes back
  interleaved in order.
- The end of a command is a sentinel with a fresh random id printed by the shell after the
  command (or by its EXIT trap when the command runs `exit`); the command's own output can
  only contain it by guessing 128 random bits.
- What ends a command other than its own end ends the session, as in CWM's: on timeout, on
  output over the limit (`output_cap_bytes`, CWM's 480 KiB) and when the shell dies (`exit`,
  `exec`, `kill -9 $$`) the shell and every process it started are killed and a fresh shell
  starts in the work directory, so the rest of the command line never runs. The result says
  why (`RunStatus`); the output read so far comes with it, for callers that want it (the
  model is shown none of it).
- Output is decoded as UTF-8, dropping bytes that are not (as CWM's session does).
- `set -e`, `set -u` and `set -x` last until the end of the command that sets them: a
  non-interactive bash exits on the first failure under them, which would end the session
  at some later, unrelated command.

Only bash and coreutils are needed in the machine: the helper reads /proc with builtins.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from cwm_agent.sandbox.base import RunResult, RunStatus, SandboxConfig, SandboxError

log = logging.getLogger(__name__)

QUIET_ENV = {
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "MANPAGER": "cat",
    "SYSTEMD_PAGER": "",
    "LESS": "-FRX",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "PIP_PROGRESS_BAR": "off",
    "PIP_NO_INPUT": "1",
    "DEBIAN_FRONTEND": "noninteractive",
    "GIT_TERMINAL_PROMPT": "0",
    "PYTHONUNBUFFERED": "1",
}
"""Set in every session so nothing waits for a pager, a prompt or a terminal."""

CWM_OUTPUT_LIMIT = 480 * 1024
"""CWM's session buffer limit in bytes: a command whose output passes it ends the session."""

END_LINE_BYTES = 9
"""Bytes of the end-of-command line CWM's session reads into the same buffer as the output
(its sentinel and a newline): the output itself may hold `limit - 9` bytes."""

PLUGIN_PYTHON_SETUP = (
    "if [[ -x /opt/miniconda3/bin/python3 ]]; then export PYPLUGIN_PYTHON_PATH=/opt/miniconda3/bin/python3; "
    "else export PYPLUGIN_PYTHON_PATH=python3; fi"
)
"""CWM's start script names the Python its edit/create plugins run with (the SWE-bench images'
miniconda one); every session does the same, falling back to `python3` where there is none."""

# The helper that kills a session's shell and what it started. Fork-free (builtins only), so it still runs when a
# fork bomb holds every pid the container may have. Arguments: signal, the session's pid,
# the earliest start time (clock ticks since boot) of a process to hit, whether processes
# re-parented to pid 1 count (only inside a container's own pid namespace), and whether the
# session shell itself is hit, and the last pid allocated when the command started (it tells
# apart processes started in the same clock tick). SIGKILL first stops the targets, a few rounds, so a fork
# bomb cannot outrun it.
KILL_HELPER = r"""
sig=$1 root=$2 cutoff=$3 orphans=$4 withroot=$5 lastpid=${6:-0}
declare -A parent start
scan() {
  parent=() start=()
  local f s pid
  for f in /proc/[0-9]*/stat; do
    { read -r s < "$f"; } 2>/dev/null || continue
    pid=${s%% *}
    set -- ${s##*) }
    parent[$pid]=$2 start[$pid]=${20}
  done
  targets=()
  for pid in "${!parent[@]}"; do
    [[ $pid == "$$" || $pid == 1 ]] && continue
    if [[ $pid == "$root" ]]; then
      [[ $withroot == 1 ]] && targets+=("$pid")
      continue
    fi
    # Started after the cutoff tick, or within it but after the last pid then allocated.
    (( start[$pid] > cutoff || (start[$pid] == cutoff && pid > lastpid) )) || continue
    local p=${parent[$pid]} n=0
    while [[ -n $p && $p != 0 && $p != 1 && $p != "$root" && $n -lt 64 ]]; do p=${parent[$p]}; n=$((n+1)); done
    if [[ $p == "$root" || ( $orphans == 1 && $p == 1 ) ]]; then targets+=("$pid"); fi
  done
}
scan
if [[ $sig == KILL ]]; then
  all=()
  for round in 1 2 3 4 5 6 7 8 9 10; do
    ((${#targets[@]})) || break
    kill -STOP "${targets[@]}" 2>/dev/null
    all+=("${targets[@]}")
    scan
  done
  all+=("${targets[@]}")
  ((${#all[@]})) && kill -KILL "${all[@]}" 2>/dev/null
else
  ((${#targets[@]})) && kill -"$sig" "${targets[@]}" 2>/dev/null
fi
exit 0
"""


class Stream(Protocol):
    """A byte stream joined to a shell's stdin and stdout."""

    def send(self, data: bytes) -> None:
        """Write all of `data`; raise OSError when the stream is gone."""

    def read(self, timeout: float) -> bytes | None:
        """Bytes that arrived, waiting up to `timeout` s: None when none came, b"" at end of stream."""

    def alive(self) -> bool:
        """Whether the shell process is still running (the stream may outlive it)."""

    def close(self) -> None:
        """Close our end; never raises."""


class ShellHost(Protocol):
    """What a backend provides so a `BashSession` can run on it."""

    def spawn_shell(self, workdir: str, env: dict[str, str]) -> Stream:
        """Start `bash --noprofile --norc` in `workdir` with `env` added, joined to a new stream."""

    def run_helper(self, script: str, args: list[str], timeout: float) -> bool:
        """Run `bash -c script _ args...` beside the session; False when it could not run."""

    def reset(self) -> None:
        """Last resort when no helper can run (e.g. every pid is taken): kill every process the session
        could have started, keeping the files. May do nothing."""

    orphans_are_ours: bool
    """True when every process re-parented to pid 1 belongs to this machine (a container's pid namespace)."""


@dataclass
class _Output:
    """A command's output, up to the limit: what is over it is counted, not kept."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit + 1 - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def over(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        return bytes(self.data[: self.limit]).decode("utf-8", errors="ignore")


@dataclass
class _End:
    exit_code: int | None
    how: str
    """"done" (the command finished), "exit" (the shell exited), "died" (the shell vanished), "timeout",
    "too_long" (the output passed the limit)."""


class BashSession:
    """A persistent bash session on a `ShellHost`. Not thread-safe by design beyond one lock:
    one command runs at a time."""

    def __init__(
        self,
        host: ShellHost,
        workdir: str,
        env: dict[str, str] | None = None,
        startup_commands: list[str] | None = None,
        output_cap_bytes: int = CWM_OUTPUT_LIMIT,
        default_timeout: float = 120.0,
        startup_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.workdir = workdir
        self.env = {**QUIET_ENV, **(env or {})}
        self.startup_commands = list(startup_commands or [])
        self.output_cap_bytes = output_cap_bytes
        self.default_timeout = default_timeout
        self.startup_timeout = startup_timeout
        self.shell_pid: int | None = None
        self.shell_start_ticks = 0
        """When the shell started (clock ticks since boot, as /proc/PID/stat counts them)."""
        self.uid = 0
        self.gid = 0
        self._stream: Stream | None = None
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._next_liveness_check = 0.0
        self._closed = False
        # Where the shell's clock (seconds since boot) stood at a moment of our monotonic clock.

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    def for_sandbox(
        cls, host: ShellHost, workdir: str, config: SandboxConfig, extra_env: dict[str, str] | None = None
    ) -> BashSession:
        """The session a sandbox backend runs, with the settings of its `SandboxConfig`."""
        return cls(
            host,
            workdir,
            env={**config.env, **(extra_env or {})},
            startup_commands=config.startup_commands,
            output_cap_bytes=config.output_cap_bytes,
            default_timeout=config.command_timeout,
        )

    def start(self) -> None:
        """Start the shell, set it up and run the startup commands (idempotent)."""
        with self._lock:
            if self._stream is None:
                self._start_locked()

    def close(self) -> None:
        """Kill the shell and close the stream (idempotent)."""
        self._closed = True
        stream = self._stream  # kept: a command in another thread may be reading it
        if stream is not None:
            if self.shell_pid and stream.alive():
                self.host.run_helper(KILL_HELPER, ["KILL", str(self.shell_pid), "0", "0", "1"], timeout=5)
            stream.close()

    def _start_locked(self) -> None:
        try:
            self._spawn_locked()
        except BaseException:
            # No half-started shell (e.g. one whose startup commands failed) is used by a later run().
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.close()
            raise

    def _spawn_locked(self) -> None:
        self._pending.clear()
        self._stream = self.host.spawn_shell(self.workdir, self.env)
        ready = f"__CWM_READY_{uuid.uuid4().hex}__"
        # Everything here is builtins: no fork, so startup stays fast.
        setup = "\n".join(
            [
                "exec 2>&1",
                "shopt -s expand_aliases",
                "set +o history 2>/dev/null",
                "__cwm_id=",
                '__cwm_done() { \\builtin set +eux; \\builtin printf \'__CWM_END_%s__%d done\\n\' "$2" "$1"; }',
                'trap \'\\builtin printf "__CWM_END_%s__%d exit\\n" "$__cwm_id" "$?"\' EXIT',
                *(f"export {k}={shlex.quote(v)}" for k, v in self.env.items()),
                PLUGIN_PYTHON_SETUP,
                f"cd {shlex.quote(self.workdir)} 2>/dev/null || cd /",
                "__cwm_u=0 __cwm_g=0",
                "while read -r __k __a __b __r; do case $__k in Uid:) __cwm_u=$__b;; Gid:) __cwm_g=$__b;; esac; "
                "done < /proc/$$/status",
                # The shell's own start time (clock ticks since boot): what it starts later is the session's.
                "read -r __s < /proc/$$/stat; set -- ${__s##*) }",
                f'printf \'{ready} %s %s %s %s\\n\' "$$" "$__cwm_u" "$__cwm_g" "${{20}}"',
                "set --; unset __k __a __b __r __s __cwm_u __cwm_g",
                "",
            ]
        )
        sent = time.monotonic()
        try:
            self._stream.send(setup.encode())
            line = self._read_line_after(ready.encode(), sent + self.startup_timeout)
        except OSError as exc:
            raise SandboxError(f"The bash session could not start: {exc}") from exc
        if line is None:
            said = bytes(self._pending[-500:]).decode("utf-8", "replace").strip() or "nothing"
            waited = time.monotonic() - sent
            if waited < self.startup_timeout - 1:  # it ended: say so, not "did not start in time"
                raise SandboxError(
                    f"The bash session ended as it started ({waited:.1f}s), saying: {said!r}; the machine may "
                    "have stopped (e.g. a command killed every process in it)"
                )
            raise SandboxError(
                f"The bash session did not start within {self.startup_timeout:.0f}s "
                f"(is bash installed in the machine?). Output: {said!r}"
            )
        pid, uid, gid, started = line.split()
        self.shell_start_ticks = int(started) if started.isdigit() else 0
        self.shell_pid, self.uid, self.gid = int(pid), int(uid), int(gid)
        for command in self.startup_commands:
            result = self._run_locked(command, self.startup_timeout, restart_on_death=False)
            if result.status is not RunStatus.OK:
                raise SandboxError(
                    f"Startup command {command!r} failed ({result.status.value}): {result.output[-2000:]}"
                )
            if result.exit_code:
                log.warning("startup command %r exited with %s: %s", command, result.exit_code, result.output[-500:])

    def _restart_locked(self) -> None:
        if self._closed:
            raise SandboxError("The sandbox was closed while a command ran.")
        old, self._stream = self._stream, None
        if old is not None:
            if self.shell_pid:
                # Everything the old session started goes with it: in a container that includes processes
                # re-parented to pid 1 (a fork bomb's, background jobs of a shell that exited), i.e. every
                # process started since that shell was.
                orphans = "1" if self.host.orphans_are_ours else "0"
                since = str(max(0, self.shell_start_ticks - 1))
                args = ["KILL", str(self.shell_pid), since, orphans, "1"]
                # A helper that cannot run while the shell lives (every pid taken) calls for the last resort;
                # when the shell is gone too, the machine may have stopped: starting afresh will say so.
                if not self.host.run_helper(KILL_HELPER, args, timeout=10) and old.alive():
                    self.host.reset()
            old.close()
        self._start_locked()

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run `command` in the session; see the module docstring for what comes back."""
        with self._lock:
            if self._closed:
                raise SandboxError("The sandbox is closed.")
            if self._stream is None:
                self._start_locked()
            return self._run_locked(command, timeout if timeout is not None else self.default_timeout)

    def _run_locked(self, command: str, timeout: float, restart_on_death: bool = True) -> RunResult:
        assert self._stream is not None
        cid = uuid.uuid4().hex
        marker = f"__CWM_END_{cid}__".encode()
        delimiter = f"__CWM_CMD_{cid}__"
        body = command if command.endswith("\n") else command + "\n"
        wrapped = (
            f"__cwm_id={cid}\n"
            f"IFS= \\builtin read -r -d '' __cwm_cmd <<'{delimiter}' || \\builtin true\n{body}{delimiter}\n"
            f'\\builtin eval "$__cwm_cmd" </dev/null; {{ __cwm_done $? {cid}; }} 2>/dev/null\n'
        ).encode()
        out = _Output(self.output_cap_bytes - END_LINE_BYTES)
        started = time.monotonic()
        try:
            self._stream.send(wrapped)
        except OSError:
            # The shell went away between commands (e.g. killed from outside): start afresh, once.
            self._restart_locked()
            started = time.monotonic()
            try:
                self._stream.send(wrapped)
            except OSError as exc:
                raise SandboxError(f"The bash session died again right after a restart: {exc}") from exc
        end = self._collect(marker, out, started + timeout)
        if end.how == "done":
            status, exit_code = RunStatus.OK, end.exit_code
        else:
            status = {"timeout": RunStatus.TIMEOUT, "too_long": RunStatus.OUTPUT_TOO_LONG}.get(
                end.how, RunStatus.SESSION_DIED
            )
            # An explicit `exit N` tells us N through the EXIT trap; nothing else has an exit code.
            exit_code = end.exit_code if status is RunStatus.SESSION_DIED else None
            if not restart_on_death:
                # A startup command: restarting would run it again, and again.
                why = {"timeout": "timed out", "too_long": "printed too much output"}.get(end.how, "ended the shell")
                raise SandboxError(f"Command {command!r} {why} and the shell did not recover: {out.text()[-2000:]}")
            self._restart_locked()
        return RunResult(
            output=out.text(),
            exit_code=exit_code,
            status=status,
            elapsed=time.monotonic() - started,
            restarted=status is not RunStatus.OK,
        )

    def _collect(self, marker: bytes, out: _Output, deadline: float) -> _End:
        """Move output into `out` until the marker's line, the deadline, or the shell's end."""
        assert self._stream is not None
        keep = len(marker) + 40
        quiet_since = time.monotonic()
        while True:
            idx = self._pending.find(marker)
            if idx >= 0:
                nl = self._pending.find(b"\n", idx)
                if nl >= 0:
                    out.add(bytes(self._pending[:idx]))
                    code, _, how = bytes(self._pending[idx + len(marker) : nl]).decode().partition(" ")
                    del self._pending[: nl + 1]
                    # CWM's session also ends a command that finished with too much output.
                    return _End(None, "too_long") if out.over else _End(int(code), how)
            elif len(self._pending) > keep:
                cut = len(self._pending) - keep
                out.add(bytes(self._pending[:cut]))
                del self._pending[:cut]
                if out.over:
                    return _End(None, "too_long")
            now = time.monotonic()
            if now >= deadline:
                out.add(bytes(self._pending))  # the session is ended: all that came is the command's
                self._pending.clear()
                return _End(None, "timeout")
            chunk = self._stream.read(min(deadline - now, 0.25))
            if chunk:
                self._pending += chunk
                quiet_since = time.monotonic()
            elif chunk == b"" or (self._liveness_check_due(quiet_since) and not self._stream.alive()):
                # The shell is gone. A background process may still hold the stream open, so
                # its liveness is checked directly, not only by the end of the stream.
                self._drain(out)
                return _End(None, "died")

    def _liveness_check_due(self, quiet_since: float) -> bool:
        """Whether to ask the host if the shell still lives: after 0.2 s of silence, then at most
        every 2 s (for Docker each check is a request to the engine, and a long silent test run
        in each of 64 sandboxes would otherwise be hundreds of requests a second)."""
        now = time.monotonic()
        if now - quiet_since <= 0.2 or now < self._next_liveness_check:
            return False
        self._next_liveness_check = now + 2.0
        return True

    def _drain(self, out: _Output, seconds: float = 1.0) -> None:
        """Move the pending bytes and what still arrives into `out`, until 50 ms pass quietly or
        `seconds` in all: a background process may never stop writing."""
        assert self._stream is not None
        out.add(bytes(self._pending))
        self._pending.clear()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (chunk := self._stream.read(0.05)):
            out.add(chunk)

    def _read_line_after(self, token: bytes, deadline: float) -> str | None:
        assert self._stream is not None
        while True:
            idx = self._pending.find(token)
            if idx >= 0:
                nl = self._pending.find(b"\n", idx)
                if nl >= 0:
                    line = bytes(self._pending[idx + len(token) : nl]).decode()
                    del self._pending[: nl + 1]
                    return line
            now = time.monotonic()
            if now >= deadline:
                return None
            chunk = self._stream.read(min(deadline - now, 0.25))
            if chunk:
                self._pending += chunk
            elif chunk == b"" or not self._stream.alive():
                return None
