"""The `submit` tool: mark a file's content as the final submission, as CWM's submit tools do.

The body, stripped, is put after `cat ` and run in the session, so the shell expands it (`$PWD`,
globs, `~`) relative to the current directory, exactly as in CWM. The submission is the output of
that command, final newline kept. Refused when the command does not end normally with exit code 0
(a missing or unreadable file), and for the `patch` kind (`ToolContext.submit_kind`) also when the
text is blank or does not start with `diff`. Whether the patch applies is not checked (CWM does
not check it either).

On success the tool's output is the submission itself; the loop wraps it in the submission
feedback. A refusal is an `ok=False` result saying why; the model can fix it and submit again.
"""

from __future__ import annotations

from cwm_agent.sandbox.base import RunStatus
from cwm_agent.tools.base import ToolContext, ToolResult, failure
from cwm_agent.tools.bash import run_bash
from cwm_agent.tools.release import load_release

REFUSALS = {
    "unreadable": "Submission of {path} failed: check that the file exists and can be read.",
    "empty": "Submission of {path} failed: the file is empty.",
    "not_diff": "Submission of {path} failed: the file is not a diff (a patch file starts with `diff`).",
    "file_unreadable": "Submission of {path} failed: check that the file exists and can be read.",
}
"""The project's wording of CWM's refusals, by reason."""


def refusal(ctx: ToolContext, reason: str, path: str) -> ToolResult:
    if ctx.cwm_release:
        return failure(load_release(ctx.cwm_release).submit_messages[reason].render(path=path))
    return failure(REFUSALS[reason].replace("{path}", path))


def check_submission(text: str, kind: str) -> str | None:
    """Why CWM refuses this text, or None when it is accepted."""
    if kind == "patch":
        if text.strip() == "":
            return "empty"
        if not text.startswith("diff"):
            return "not_diff"
    return None


class SubmitTool:
    name = "submit"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        path = body.strip()
        result = run_bash(ctx, f"cat {path}")
        if result.status is not RunStatus.OK or result.exit_code != 0:
            refused = refusal(ctx, "unreadable" if ctx.submit_kind == "patch" else "file_unreadable", path)
            refused.restarted = result.restarted
            return refused
        text = result.output
        reason = check_submission(text, ctx.submit_kind)
        if reason is not None:
            return refusal(ctx, reason, path)
        return ToolResult(output=text, ok=True, submission=text)
