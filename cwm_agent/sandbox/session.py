"""One persistent bash session driven over one byte stream, for every backend.

The backend gives us a `ShellHost`: a way to start `bash` with its stdin and stdout joined
to a byte stream (a `docker exec -i` socket, or a local pipe), and a way to run a short
helper script beside it (to interrupt a command). Everything else lives here:

- Each command is sent inside a quoted heredoc, read into a variable and `eval`ed at the
  top level of the shell, so cwd, variables, functions and aliases persist. Its stdin is
  /dev/null; stderr was joined to stdout when the shell started, so output comes back
  interleaved in order.
- The end of a command is a sentinel with a fresh random id printed by the shell after the
  command (or by its EXIT trap when the command runs `exit`); the command's own output can
  only contain it by guessing 128 random bits.
- Output over the cap keeps its head and tail and says how many bytes were cut.
- On timeout the processes the command started get SIGINT, then SIGKILL; when the shell
  still does not answer, it is killed and a fresh one starts in the work directory.
- When the shell dies (`exit`, `exec`, `kill -9 $$`) a fresh one starts too.
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

TRUNCATION_MARKER = "\n[... {dropped} bytes of output dropped ...]\n"
"""Put where the middle of an over-long output was cut."""

USER_HZ = 100
"""Clock ticks per second of /proc/PID/stat start times (100 on every Linux architecture)."""

# The helper that interrupts a command. Fork-free (builtins only), so it still runs when a
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
    """Command output kept within a cap: the first half and the latest half of the bytes."""

    cap: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        half = self.cap // 2
        room = half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * (self.cap - half) + 65536:
                del self.tail[: len(self.tail) - (self.cap - half)]

    def render(self) -> tuple[str, int]:
        """The decoded output and how many bytes were dropped from its middle."""
        if self.total <= self.cap:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace"), 0
        tail = bytes(self.tail[len(self.tail) - (self.cap - self.cap // 2) :])
        # Start the tail on a character boundary rather than with a broken UTF-8 sequence.
        skip = 0
        while skip < 3 and skip < len(tail) and 0x80 <= tail[skip] <= 0xBF:
            skip += 1
        tail = tail[skip:]
        dropped = self.total - len(self.head) - len(tail)
        text = bytes(self.head).decode("utf-8", errors="replace")
        return text + TRUNCATION_MARKER.format(dropped=dropped) + tail.decode("utf-8", errors="replace"), dropped


@dataclass
class _End:
    exit_code: int | None
    how: str
    """"done" (the command finished), "exit" (the shell exited), "died" (the shell vanished), "timeout"."""


class BashSession:
    """A persistent bash session on a `ShellHost`. Not thread-safe by design beyond one lock:
    one command runs at a time."""

    def __init__(
        self,
        host: ShellHost,
        workdir: str,
        env: dict[str, str] | None = None,
        startup_commands: list[str] | None = None,
        output_cap_bytes: int = 100_000,
        default_timeout: float = 120.0,
        interrupt_grace: float = 1.0,
        startup_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.workdir = workdir
        self.env = {**QUIET_ENV, **(env or {})}
        self.startup_commands = list(startup_commands or [])
        self.output_cap_bytes = output_cap_bytes
        self.default_timeout = default_timeout
        self.interrupt_grace = interrupt_grace
        self.startup_timeout = startup_timeout
        self.shell_pid: int | None = None
        self.uid = 0
        self.gid = 0
        self._stream: Stream | None = None
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._next_liveness_check = 0.0
        self._closed = False
        # Where the shell's clock (seconds since boot) stood at a moment of our monotonic clock.
        self._uptime_at = (0.0, 0.0)
        self._start_marker: bytes | None = None
        self._start_ticks: int | None = None
        self._start_last_pid = 0

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
                f"cd {shlex.quote(self.workdir)} 2>/dev/null || cd /",
                "__cwm_u=0 __cwm_g=0",
                "while read -r __k __a __b __r; do case $__k in Uid:) __cwm_u=$__b;; Gid:) __cwm_g=$__b;; esac; "
                "done < /proc/$$/status",
                "read -r __cwm_up __r < /proc/uptime",
                f'printf \'{ready} %s %s %s %s\\n\' "$$" "$__cwm_up" "$__cwm_u" "$__cwm_g"',
                "unset __k __a __b __r __cwm_u __cwm_g __cwm_up",
                "",
            ]
        )
        try:
            self._stream.send(setup.encode())
            line = self._read_line_after(ready.encode(), time.monotonic() + self.startup_timeout)
        except OSError as exc:
            raise SandboxError(f"The bash session could not start: {exc}") from exc
        if line is None:
            raise SandboxError(
                f"The bash session did not start within {self.startup_timeout:.0f}s "
                f"(is bash installed in the machine?). Output: {bytes(self._pending[-500:])!r}"
            )
        received = time.monotonic()
        pid, uptime, uid, gid = line.split()
        self.shell_pid, self.uid, self.gid = int(pid), int(uid), int(gid)
        self._uptime_at = (float(uptime), received)
        for command in self.startup_commands:
            result = self._run_locked(command, self.startup_timeout, restart_on_death=False)
            if result.status in (RunStatus.TIMEOUT, RunStatus.SESSION_DIED):
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
            if self.shell_pid and old.alive():
                if not self.host.run_helper(KILL_HELPER, ["KILL", str(self.shell_pid), "0", "0", "1"], timeout=10):
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
            # When the command starts, on the clock of /proc/PID/stat: what it starts is what a timeout stops.
            "\\builtin read -r __cwm_t __cwm_r </proc/uptime; "
            "\\builtin read -r __cwm_r __cwm_r __cwm_r __cwm_r __cwm_p </proc/loadavg; "
            f'\\builtin printf \'__CWM_START_%s__%s %s\\n\' {cid} "$__cwm_t" "$__cwm_p"; '
            f'\\builtin eval "$__cwm_cmd" </dev/null; {{ __cwm_done $? {cid}; }} 2>/dev/null\n'
        ).encode()
        out = _Output(self.output_cap_bytes)
        self._start_marker: bytes | None = f"__CWM_START_{cid}__".encode()
        self._start_ticks: int | None = None
        self._start_last_pid = 0
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
        restarted = False
        if end.how == "timeout":
            end = self._interrupt(marker, out, started)
            if end.how != "done":
                if not restart_on_death:
                    # A startup command: restarting would run it again, and again.
                    raise SandboxError(f"Command {command!r} timed out and the shell did not recover.")
                self._restart_locked()
                restarted = True
            status, exit_code = RunStatus.TIMEOUT, None
        elif end.how in ("exit", "died"):
            if restart_on_death:
                self._restart_locked()
                restarted = True
            # An explicit `exit N` tells us N through the EXIT trap; a vanished shell tells nothing.
            status, exit_code = RunStatus.SESSION_DIED, end.exit_code
        else:
            status, exit_code = RunStatus.OK, end.exit_code
        output, dropped = out.render()
        if dropped and status == RunStatus.OK:
            status = RunStatus.OUTPUT_TRUNCATED
        return RunResult(
            output=output,
            exit_code=exit_code,
            status=status,
            elapsed=time.monotonic() - started,
            restarted=restarted,
            dropped_bytes=dropped,
        )

    def _interrupt(self, marker: bytes, out: _Output, started: float) -> _End:
        """Stop what the command started: SIGINT first, so programs can tidy up; then SIGKILL for
        whatever is left, even when the shell answered, since processes the command put in the
        background (a fork bomb's, say) would otherwise go on. Returns the shell's answer, or a
        "timeout" end when it did not answer."""
        assert self.shell_pid is not None
        # The command's processes are those started after it was sent, on the shell's clock.
        if self._start_ticks is not None:
            cutoff, last_pid = self._start_ticks, self._start_last_pid
        else:  # the shell has not said when the command started: estimate it with our clock
            uptime, at = self._uptime_at
            cutoff, last_pid = int((uptime + (started - at)) * USER_HZ) - 1, 0
        orphans = "1" if self.host.orphans_are_ours else "0"
        end = _End(None, "timeout")
        for sig in ("INT", "KILL"):
            if not self.host.run_helper(
                KILL_HELPER, [sig, str(self.shell_pid), str(cutoff), orphans, "0", str(last_pid)], timeout=10
            ):
                self.host.reset()
            if end.how == "timeout":
                end = self._collect(marker, out, time.monotonic() + self.interrupt_grace)
        if end.how == "done":
            # Last words of the killed processes belong to this command, not the next one.
            self._drain(out)
        return end

    def _collect(self, marker: bytes, out: _Output, deadline: float) -> _End:
        """Move output into `out` until the marker's line, the deadline, or the shell's end."""
        assert self._stream is not None
        keep = len(marker) + 40
        quiet_since = time.monotonic()
        while True:
            if self._start_marker is not None:
                self._take_start_marker(out)
            idx = self._pending.find(marker)
            if idx >= 0:
                nl = self._pending.find(b"\n", idx)
                if nl >= 0:
                    out.add(bytes(self._pending[:idx]))
                    code, _, how = bytes(self._pending[idx + len(marker) : nl]).decode().partition(" ")
                    del self._pending[: nl + 1]
                    return _End(int(code), how)
            elif len(self._pending) > keep:
                cut = len(self._pending) - keep
                out.add(bytes(self._pending[:cut]))
                del self._pending[:cut]
            now = time.monotonic()
            if now >= deadline:
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

    def _take_start_marker(self, out: _Output) -> None:
        """Remove the line saying when the command started; what came before it is stray output of
        background processes, which is kept."""
        assert self._start_marker is not None
        idx = self._pending.find(self._start_marker)
        if idx < 0:
            return
        nl = self._pending.find(b"\n", idx)
        if nl < 0:
            return
        value = bytes(self._pending[idx + len(self._start_marker) : nl]).decode(errors="replace")
        out.add(bytes(self._pending[:idx]))
        del self._pending[: nl + 1]
        self._start_marker = None
        uptime, _, last_pid = value.partition(" ")
        seconds, _, hundredths = uptime.partition(".")
        if seconds.isdigit() and hundredths.isdigit():
            self._start_ticks = int(seconds) * USER_HZ + int(hundredths[:2].ljust(2, "0"))
            self._start_last_pid = int(last_pid) if last_pid.isdigit() else 0

    def _drain(self, out: _Output, seconds: float = 1.0) -> None:
        """Move the pending bytes and what still arrives into `out`, until 50 ms pass quietly or
        `seconds` in all: a background process the interrupt spared may never stop writing."""
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
