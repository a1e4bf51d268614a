"""What every tool shares: the context it runs in, the result it returns, and its shape.

A tool takes the body of the model's `<tool: NAME>` call and returns a `ToolResult` whose
`output` is the text the model sees inside `<output>`. Tools never raise for the model's
mistakes (a missing file, a bad block): those are `ok=False` results the model can act on.
They do let `SandboxError` through, since a broken sandbox is the harness's problem.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel

from cwm_agent.sandbox.base import Sandbox

SubmitKind = Literal["patch", "file"]
"""What `submit` accepts: `patch` (issue solving: a git diff that applies to the base commit)
or `file` (test generation and other tasks: any non-empty file; the submission is its content)."""

PROBE_TIMEOUT = 30.0
"""Seconds the small helper commands (path checks, `git apply --check`) may take."""


@dataclass
class ToolContext:
    """Where and how the tools act for one episode."""

    sandbox: Sandbox
    repo_dir: str = "/testbed"
    """The repository the patch is checked against."""
    base_commit: str | None = None
    """The commit a submitted patch must apply to; None: the repository's HEAD at submit time."""
    command_timeout: float = 120.0
    """Seconds a bash command may run before the session is interrupted (CWM: 120)."""
    submit_kind: SubmitKind = "patch"


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
    is_dir: bool
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
        f'[ -d "$(dirname -- {p})" ] && echo parent=1; '
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
        if sep and key in {"cwd", "exists", "dir", "parent", "mode", "real"} and key not in fields:
            fields[key] = value
    cwd = fields.get("cwd") or "/"
    mode = fields.get("mode")
    return PathInfo(
        path=resolve_path(cwd, path),
        exists="exists" in fields,
        is_dir="dir" in fields,
        parent_is_dir="parent" in fields,
        mode=int(mode, 8) if mode and mode.isdigit() else None,
        real_path=fields.get("real") or None,
    )


def resolve_path(cwd: str, path: str) -> str:
    """`path` made absolute against `cwd`, with `.` and `..` folded (as the shell's `cd -L` does)."""
    import posixpath

    joined = path if path.startswith("/") else posixpath.join(cwd, path)
    return posixpath.normpath(joined).replace("//", "/")


def probe_path(ctx: ToolContext, path: str) -> PathInfo:
    """Ask the session about `path` (one short command)."""
    result = ctx.sandbox.run(probe_command(path), timeout=PROBE_TIMEOUT)
    return parse_probe(result.output, path)


def path_from_first_line(body: str) -> tuple[str, str]:
    """Split a body into its first line (a path, stripped) and the rest (after the newline)."""
    first, _, rest = body.partition("\n")
    return first.strip(), rest
