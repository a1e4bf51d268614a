"""The sandbox contract: what the agent, the tools and the evaluator may do on a machine.

A *sandbox* is one isolated machine (a Docker container, or a temporary directory for the
unsafe local backend) with one persistent bash session in it. Backends live beside this
module (`docker.py`, `local.py`); everything else in the project talks to `Sandbox` only.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cwm_agent.errors import UserError

PROJECT_LABEL = "io.cwm-agent.project"
"""Docker label put on every container the project starts (value: "cwm-agent")."""
RUN_ID_LABEL = "io.cwm-agent.run-id"
"""Docker label naming the run (one `solve`, one batch) that started the container."""
OWNER_PID_LABEL = "io.cwm-agent.owner-pid"
"""Docker label with the pid of the process that started the container (for `prune`)."""


class RunStatus(str, enum.Enum):
    """How a command in the session ended."""

    OK = "ok"
    """The command finished (whatever its exit code)."""
    TIMEOUT = "timeout"
    """The command ran past its timeout: the session was killed and a fresh one started."""
    OUTPUT_TOO_LONG = "output_too_long"
    """The command's output passed `output_cap_bytes`: the session was killed and a fresh one started."""
    SESSION_DIED = "session_died"
    """The shell went away during the command (e.g. `exit`, `kill -9 $$`); a fresh one was started."""


class RunResult(BaseModel):
    """The outcome of one command in the persistent session."""

    output: str = Field(
        description="stdout and stderr interleaved in order, decoded as UTF-8 dropping invalid bytes; "
        "when the status is not OK, what was read before the session was killed (at most the cap)"
    )
    exit_code: int | None = Field(description="the command's exit code; None when it timed out or the session died")
    status: RunStatus
    elapsed: float = Field(description="seconds from sending the command to receiving its end")
    restarted: bool = Field(default=False, description="a fresh session was started in the work directory")


class SandboxError(UserError, RuntimeError):
    """The sandbox could not be created or used; the message says what to do."""


class ImageNotFoundError(SandboxError):
    """The image is not on the engine and could not (or may not) be pulled."""


class FileTooLargeError(SandboxError, OSError):
    """A file read from the sandbox is over its cap (an OSError too, so tools report it like any
    unreadable file)."""


class DiskLimitError(SandboxError):
    """The sandbox wrote more than its disk limit and was stopped."""


_SIZE = re.compile(r"^(\d+)([bkmg]?)$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY = 64 * 1024**2
"""Less memory than this (64m) and a container can't run bash, git and python together."""


def parse_size(value: str) -> int:
    """Bytes in a Docker size ("512m", "4g", "1048576"); ValueError with a one-line reason."""
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size: write digits and a unit b, k, m or g (e.g. 4g)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(n: int) -> str:
    """A byte count for people: 1.5 MB, 300 kB, 12 bytes (decimal units)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


DEFAULT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"]
"""Capabilities a sandbox keeps (all others are dropped): what root needs to install packages, own and
change files, run tests as another user and stop processes; Docker's other defaults (MKNOD, NET_RAW,
SETFCAP, SETPCAP, SYS_CHROOT, AUDIT_WRITE) are not needed by SWE tasks."""


class SandboxConfig(BaseModel):
    """How to make a sandbox. Defaults are CWM's SWE-bench settings where they apply."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["docker", "local"] = "docker"
    """`docker` (isolated) or `local` (no isolation at all: a temporary directory on this host)."""
    image: str = "cwm-agent/base:bookworm"
    """Docker image to start the container from."""
    workdir: str = "/testbed"
    """Directory the session starts in, and returns to after a restart."""
    network: Literal["none", "host"] = "none"
    """`none`: no network in the container. `host`: the host's network (explicit opt-in)."""
    memory: str = "4g"
    """Memory limit (Docker syntax: digits and b, k, m or g; at least 64m). No swap on top."""
    cpus: float = Field(2.0, gt=0)
    """CPU limit, in cores (> 0)."""
    pids_limit: int | None = Field(1024, ge=16)
    """Most processes/threads the container may have (stops fork bombs; at least 16). null: no limit."""
    disk: str | None = "10g"
    """Most bytes the container may write to its own file system (Docker size syntax): a quota where the
    engine supports one (overlay2 on xfs with pquota), else a watch that stops the sandbox. null: no limit."""
    disk_check_seconds: float = Field(5.0, gt=0)
    """How often the watch measures the container's writes, when the engine has no quota."""
    command_timeout: float = Field(120.0, gt=0)
    """Default seconds a command may run; past it the session is killed (the rest of the command line does
    not run) and a fresh one starts in `workdir` (CWM: 120)."""
    output_cap_bytes: int = Field(480 * 1024, ge=1_000)
    """CWM's session buffer limit: a command whose output (plus CWM's 9-byte end-of-command line) passes
    this many bytes ends the session like a timeout (`RunStatus.OUTPUT_TOO_LONG`); output within it comes
    back whole. To keep a bigger output, redirect it to a file."""
    max_read_bytes: int = Field(32_000_000, ge=1_000)
    """Most bytes of one file read from the sandbox (the edit and submit tools, evaluation files); a larger
    file is an error naming this cap."""
    max_diff_bytes: int = Field(20_000_000, ge=1_000)
    """Most bytes of the final diff of the working tree; a larger one is not taken (an error naming this
    cap; the submitted patch is kept either way)."""
    cap_add: list[str] = Field(default_factory=lambda: list(DEFAULT_CAPS))
    """Linux capabilities the container keeps; every other one is dropped (and no-new-privileges is set)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the session."""
    startup_commands: list[str] = Field(default_factory=list)
    """Commands run in the session before first use (e.g. activating a conda env)."""
    allow_pull: bool = False
    """Pull the image from a registry when it is not on the engine."""
    run_id: str = ""
    """Label value naming the run this sandbox belongs to (empty: generated)."""

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        return check_memory(value)

    @field_validator("disk")
    @classmethod
    def _disk(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) < MIN_MEMORY:
            raise ValueError(f"{value!r} is too small: give at least 64m")
        return value

    @property
    def disk_bytes(self) -> int | None:
        return parse_size(self.disk) if self.disk is not None else None


def check_memory(value: str) -> str:
    """A Docker memory limit of at least 64m, or ValueError with a one-line reason."""
    if parse_size(value) < MIN_MEMORY:
        raise ValueError(f"{value!r} is too small for a sandbox: give at least 64m (e.g. 4g)")
    return value


@runtime_checkable
class Sandbox(Protocol):
    """One machine with one persistent bash session. Use as a context manager."""

    config: SandboxConfig

    @property
    def workdir(self) -> str:
        """The directory the session starts in, as commands in the sandbox name it (Docker:
        `config.workdir`; local: a temporary directory standing in for it)."""

    def start(self) -> None:
        """Create the machine and start the session (idempotent)."""

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run `command` (any bash, multi-line allowed) in the persistent session, stdin from /dev/null."""

    def read_file(self, path: str, max_bytes: int | None = None, follow_symlinks: bool = True) -> bytes:
        """Bytes of a file (absolute path), at most `max_bytes` (default `config.max_read_bytes`).
        Raises FileNotFoundError, IsADirectoryError, FileTooLargeError (without reading the file);
        with `follow_symlinks=False` a link is an IsADirectoryError ("not a regular file")."""

    def read_head_tail(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        """A file's first and last `max_bytes // 2` bytes joined, and how many bytes were left out of
        the middle (0 when the whole file came back); memory stays under `max_bytes` however large it is."""

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or overwrite a file (absolute path); the parent directory must exist."""

    def copy_in(self, src: Path, dest: str) -> None:
        """Copy a host directory, file or .tar archive to `dest` (a directory) in the sandbox."""

    def copy_out(self, src: str, dest: Path) -> None:
        """Copy a sandbox file or directory to the host directory `dest`."""

    def close(self) -> None:
        """Stop the session and remove the machine (idempotent, never raises for a gone machine)."""

    def __enter__(self) -> Sandbox: ...

    def __exit__(self, *exc: object) -> None: ...
