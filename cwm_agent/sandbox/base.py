"""The sandbox contract: what the agent, the tools and the evaluator may do on a machine.

A *sandbox* is one isolated machine (a Docker container, or a temporary directory for the
unsafe local backend) with one persistent bash session in it. Backends live beside this
module (`docker.py`, `local.py`); everything else in the project talks to `Sandbox` only.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

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


class SandboxConfig(BaseModel):
    """How to make a sandbox. Defaults are CWM's SWE-bench settings where they apply."""

    backend: Literal["docker", "local"] = "docker"
    """`docker` (isolated) or `local` (no isolation at all: a temporary directory on this host)."""
    image: str = "cwm-agent/base:bookworm"
    """Docker image to start the container from."""
    workdir: str = "/testbed"
    """Directory the session starts in, and returns to after a restart."""
    network: Literal["none", "host"] = "none"
    """`none`: no network in the container. `host`: the host's network (explicit opt-in)."""
    memory: str = "4g"
    """Memory limit (Docker syntax, e.g. 4g)."""
    cpus: float = 2.0
    """CPU limit, in cores."""
    pids_limit: int = 1024
    """Most processes/threads the container may have (stops fork bombs)."""
    command_timeout: float = 120.0
    """Default seconds a command may run; past it the session is killed (the rest of the command line does
    not run) and a fresh one starts in `workdir` (CWM: 120)."""
    output_cap_bytes: int = 480 * 1024
    """CWM's session buffer limit: a command whose output (plus CWM's 9-byte end-of-command line) passes
    this many bytes ends the session like a timeout (`RunStatus.OUTPUT_TOO_LONG`); output within it comes
    back whole. To keep a bigger output, redirect it to a file."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the session."""
    startup_commands: list[str] = Field(default_factory=list)
    """Commands run in the session before first use (e.g. activating a conda env)."""
    allow_pull: bool = False
    """Pull the image from a registry when it is not on the engine."""
    run_id: str = ""
    """Label value naming the run this sandbox belongs to (empty: generated)."""


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

    def read_file(self, path: str) -> bytes:
        """Bytes of a file (absolute path). Raises FileNotFoundError, IsADirectoryError."""

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
