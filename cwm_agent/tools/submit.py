"""The `submit` tool: mark a result as the final submission. The body is the path of a file.

Two kinds (`ToolContext.submit_kind`):
- `patch` (issue solving): the file must be a git diff (it starts with `diff`) that applies to
  the task's base commit. The check reads the base tree into a throwaway index and runs
  `git apply --cached --check` against it, so the working tree, the real index and the
  session's state are left alone. The submission is the patch text.
- `file` (test generation and other tasks): any non-empty text file; the submission is its content.

A refused submission is an `ok=False` result saying why; the model can fix it and submit again.
"""

from __future__ import annotations

import shlex

from cwm_agent.prompts.templates import submission_feedback, test_submission_feedback
from cwm_agent.tools.base import PROBE_TIMEOUT, ToolContext, ToolResult, failure, probe_path

APPLIES = "__cwm_patch_applies__"
NO_BASE = "__cwm_base_unreadable__"


class SubmitError(Exception):
    """The submission was refused; the message says why."""


def parse_submit_path(body: str) -> str:
    """The path in a submit body (one line), or SubmitError."""
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    if not lines:
        raise SubmitError("Give the path of the file to submit.")
    if len(lines) > 1:
        if lines[0].startswith(("diff", "---", "+++", "@@")):
            raise SubmitError(
                "Submit takes the path of a patch file, not the patch itself. Write the patch to a file "
                "(for example `git diff > /tmp/patch.diff`) and submit that path."
            )
        raise SubmitError("Submit takes a single line: the path of the file to submit.")
    return lines[0]


def decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SubmitError(
            f"Failed to submit {path}: it is not UTF-8 text ({error.reason} at byte {error.start})."
        ) from None


def check_patch_text(text: str, path: str) -> None:
    """The checks on the text alone: not empty, and a git diff."""
    if not text.strip():
        raise SubmitError(
            f"Failed to submit {path}: the file is empty. Write the patch into it (e.g. `git diff > {path}`)."
        )
    if not text.startswith("diff"):
        raise SubmitError(
            f"Failed to submit {path}: it is not a git diff (a patch file starts with `diff`, "
            f"as the output of `git diff` does). It starts with: {text.splitlines()[0][:80]!r}"
        )


def check_file_text(text: str, path: str) -> None:
    if not text.strip():
        raise SubmitError(f"Failed to submit {path}: the file is empty.")


def apply_check_command(repo_dir: str, base: str, patch_path: str) -> str:
    """A shell command printing APPLIES when `patch_path` applies to `base`, else git's error.

    It runs in a subshell (the session keeps its variables and directory) with a temporary
    index file, which is removed afterwards.
    """
    git = f"git -c safe.directory='*' -C {shlex.quote(repo_dir)}"
    return (
        '( d=$(mktemp -d) && export GIT_INDEX_FILE="$d/index" && '
        f"if {git} read-tree {shlex.quote(base)} 2>&1; then "
        f"{git} apply --cached --check -- {shlex.quote(patch_path)} 2>&1 && echo {APPLIES}; "
        f"else echo {NO_BASE}; fi; "
        'rm -rf "$d" )'
    )


def read_apply_check(output: str, path: str, repo_dir: str, base: str) -> None:
    """Turn `apply_check_command`'s output into nothing (applies) or SubmitError."""
    lines = output.strip().splitlines()
    if lines and lines[-1].strip() == APPLIES:
        return
    git_says = "\n".join(line for line in lines if line.strip() not in (APPLIES, NO_BASE)).strip()
    if NO_BASE in output:
        raise SubmitError(
            f"Failed to submit {path}: the base commit {base} of {repo_dir} could not be read, so the patch "
            f"cannot be checked. git said:\n{git_says}"
        )
    raise SubmitError(
        f"Failed to submit {path}: the patch does not apply to the original code (commit {base[:12]} of {repo_dir}). "
        f"git apply said:\n{git_says}\n"
        f"Make the patch in {repo_dir} against the original commit, new files included "
        f"(e.g. `git add -A && git diff --cached {base[:12]} > /tmp/patch.diff`), and submit again."
    )


class SubmitTool:
    name = "submit"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        try:
            return self._run(body, ctx)
        except SubmitError as error:
            return failure(str(error))

    def _run(self, body: str, ctx: ToolContext) -> ToolResult:
        path = parse_submit_path(body)
        info = probe_path(ctx, path)
        if info.is_dir:
            raise SubmitError(f"Failed to submit {path}: it is a directory, not a file.")
        if not info.exists:
            raise SubmitError(f"Failed to submit {path}: no such file (resolved to {info.path}). Make sure it exists.")
        try:
            data = ctx.sandbox.read_file(info.real_path or info.path)
        except (OSError, ValueError) as error:
            raise SubmitError(f"Failed to submit {path}: it could not be read ({error}).") from None
        text = decode(data, path)
        if ctx.submit_kind == "file":
            check_file_text(text, path)
            return ToolResult(output=test_submission_feedback(text.removesuffix("\n")), ok=True, submission=text)
        check_patch_text(text, path)
        base = ctx.base_commit or "HEAD"
        check = ctx.sandbox.run(
            apply_check_command(ctx.repo_dir, base, info.real_path or info.path), timeout=PROBE_TIMEOUT
        )
        read_apply_check(check.output, path, ctx.repo_dir, base)
        return ToolResult(output=submission_feedback(text.removesuffix("\n")), ok=True, submission=text)
