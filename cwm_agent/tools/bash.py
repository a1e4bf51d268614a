"""The `bash` tool: run the body in the sandbox's persistent session, as CWM's tool does.

The model sees the output exactly as produced (stdout and stderr merged in order, the final
newline kept, no exit code). A command that ends the session (a timeout, output over the
session's limit, `exit` or a dead shell) shows none of its output: only a message saying why the
session ended and that a fresh one started in the default working directory.
"""

from __future__ import annotations

from cwm_agent.sandbox.base import RunResult, RunStatus
from cwm_agent.tools.base import ToolContext, ToolResult
from cwm_agent.tools.release import load_release

FRESH_SESSION = "A new session has been started; the working directory is back to its default."

SESSION_ENDED = {
    RunStatus.TIMEOUT: f"The session was ended because the command ran out of time. {FRESH_SESSION}",
    RunStatus.OUTPUT_TOO_LONG: f"The session was ended because the command printed too much output. {FRESH_SESSION}",
    RunStatus.SESSION_DIED: f"The session ended unexpectedly. {FRESH_SESSION}",
}
"""What the model is told, by how the session ended (the project's wording of CWM's messages)."""


def bash_output(result: RunResult, messages: dict[str, str] | None = None) -> str:
    """The text the model sees for one command's result; `messages`: the release's, by status value."""
    if result.status is RunStatus.OK:
        return result.output
    if messages is not None:
        return messages[result.status.value]
    return SESSION_ENDED[result.status]


def bash_result(result: RunResult, messages: dict[str, str] | None = None) -> ToolResult:
    return ToolResult(
        output=bash_output(result, messages),
        ok=result.status is RunStatus.OK,
        timed_out=result.status is RunStatus.TIMEOUT,
        restarted=result.restarted,
        elapsed=result.elapsed,
    )


def run_bash(ctx: ToolContext, command: str) -> RunResult:
    """Run `command` as CWM's session does: trailing whitespace of the command line is dropped."""
    return ctx.sandbox.run(command.rstrip(), timeout=ctx.command_timeout)


class BashTool:
    name = "bash"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        messages = load_release(ctx.cwm_release).bash_messages if ctx.cwm_release else None
        return bash_result(run_bash(ctx, body), messages)
