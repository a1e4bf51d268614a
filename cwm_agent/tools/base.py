"""What every tool shares: the context it runs in, the result it returns, and its shape.

A tool takes the body of the model's `<tool: NAME>` call and returns a `ToolResult` whose
`output` is the text the model sees inside `<output>`. Tools never raise for the model's
mistakes (a missing file, a bad block): those are `ok=False` results the model can act on.
They do let `SandboxError` through, since a broken sandbox is the harness's problem.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from cwm_agent.sandbox.base import Sandbox

SubmitKind = Literal["patch", "file"]
"""What `submit` accepts (CWM's two submit tools): `patch` (issue solving: a readable, non-empty file
starting with `diff`; whether it applies is not checked) or `file` (test generation: any readable file).
Either way the submission is the file's content."""

PROBE_TIMEOUT = 30.0
"""Seconds the small helper command that looks at a path may take."""


@dataclass
class ToolContext:
    """Where and how the tools act for one episode."""

    sandbox: Sandbox
    repo_dir: str = "/testbed"
    """The task's repository (the tools themselves do not use it: CWM's submit checks no apply)."""
    base_commit: str | None = None
    """The task's base commit (not used by the tools, see `repo_dir`)."""
    command_timeout: float = 120.0
    """Seconds a command (bash, and the commands of edit, create and submit) may run before the session
    is killed and a fresh one started (CWM: 120)."""
    submit_kind: SubmitKind = "patch"
    cwm_release: Path | None = None
    """A checkout of CWM's release: bash and submit use its messages, edit and create run its plugin
    scripts in the sandbox (see `tools.release`). None: the project's own texts and tools."""


class ToolResult(BaseModel):
    """The outcome of one tool call."""

    output: str
    """The text the model sees inside `<output>`."""
    ok: bool
    """The tool did what was asked (for bash: the command ran to its end, whatever its exit code)."""
    submission: str | None = None
    """For an accepted submit: the submitted text (the patch, or the file's content)."""
    timed_out: bool = False
    restarted: bool = False
    """The sandbox session was restarted (timeout or a dead shell): cwd and variables are reset."""
    elapsed: float = 0.0
    """Seconds the tool took, sandbox calls included."""


class Tool(Protocol):
    name: str

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult: ...


def failure(message: str) -> ToolResult:
    return ToolResult(output=message, ok=False)


@dataclass
class PathInfo:
    """What the session knows about a path the model named."""

    path: str
    """Absolute path (resolved against the session's current directory, symlinks kept)."""
    exists: bool
    """The path names something, symlinks followed (a dangling link does not exist)."""
    is_dir: bool
    parent_exists: bool
    """The parent of the path made absolute (`..` folded first, as Python's `os.path.abspath`) exists."""
    parent_is_dir: bool
    mode: int | None
    """Permission bits of an existing file (e.g. 0o755), None when unknown."""
    real_path: str | None = None
    """The path with symlinks resolved (None when its directory is missing): where reads and
    writes go, so that a symlink stays a link and its target is what changes."""


def probe_command(path: str) -> str:
    """One shell command that reports on `path` as the session sees it (relative to its cwd).

    Run in a subshell so the session's variables and current directory are untouched.
    """
    p = shlex.quote(path)
    return (
        "( "
        f'printf "cwd=%s\\n" "$PWD"; '
        f"[ -e {p} ] && echo exists=1; "
        f"[ -d {p} ] && echo dir=1; "
        f'd=$(dirname -- "$(realpath -ms -- {p} 2>/dev/null || printf %s {p})"); '
        '[ -e "$d" ] && echo pexists=1; [ -d "$d" ] && echo parent=1; '
        f"[ -f {p} ] && stat -L -c 'mode=%a' -- {p}; "
        # readlink -f also resolves a path whose last component does not exist yet.
        f"r=$(readlink -f -- {p}) && printf 'real=%s\\n' \"$r\"; "
        "true )"
    )


def parse_probe(output: str, path: str) -> PathInfo:
    """Read `probe_command`'s output; `path` is the path as the model wrote it."""
    fields: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in {"cwd", "exists", "dir", "pexists", "parent", "mode", "real"} and key not in fields:
            fields[key] = value
    cwd = fields.get("cwd") or "/"
    mode = fields.get("mode")
    return PathInfo(
        path=resolve_path(cwd, path),
        exists="exists" in fields,
        is_dir="dir" in fields,
        parent_exists="pexists" in fields,
        parent_is_dir="parent" in fields,
        mode=int(mode, 8) if mode and mode.isdigit() else None,
        real_path=fields.get("real") or None,
    )


def resolve_path(cwd: str, path: str) -> str:
    """`path` made absolute against `cwd`, with `.` and `..` folded (as the shell's `cd -L` does)."""
    joined = path if path.startswith("/") else posixpath.join(cwd, path)
    return posixpath.normpath(joined).replace("//", "/")


def probe_path(ctx: ToolContext, path: str) -> PathInfo:
    """Ask the session about `path` (one short command)."""
    result = ctx.sandbox.run(probe_command(path), timeout=PROBE_TIMEOUT)
    return parse_probe(result.output, path)


def as_plugin_input(body: str) -> str:
    """A call's body as CWM's edit and create plugins read it: from a heredoc (which adds a final
    newline) in Python's text mode (which turns `\r\n` and lone `\r` into `\n`)."""
    return (body + "\n").replace("\r\n", "\n").replace("\r", "\n")
