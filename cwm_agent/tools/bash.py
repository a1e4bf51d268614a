"""The `bash` tool: run the body in the sandbox's persistent session.

The model sees stdout and stderr merged in order, with the final newline dropped and no exit
code (as in CWM's training). When the command ran past the timeout or the shell died, a note
after the output says so and what state the new session is in. The sandbox's output cap (and
its marker in the middle of the output) applies as is.
"""

from __future__ import annotations

from cwm_agent.sandbox.base import RunResult, RunStatus
from cwm_agent.tools.base import ToolContext, ToolResult


def _seconds(timeout: float) -> str:
    return f"{timeout:g}"


def timeout_note(timeout: float, restarted: bool, workdir: str) -> str:
    if restarted:
        return (
            f"The command did not finish within {_seconds(timeout)} seconds and was ended by the timeout, "
            f"together with the session. A fresh session has started in the default working directory ({workdir}); "
            "the previous current directory, variables and background jobs are gone."
        )
    return (
        f"The command did not finish within {_seconds(timeout)} seconds and was interrupted by the timeout. "
        "The session is still the same (its current directory and variables are kept)."
    )


def session_died_note(workdir: str) -> str:
    return (
        "The session ended during this command (for example through `exit`). A fresh session has started "
        f"in the default working directory ({workdir}); the previous current directory and variables are gone."
    )


def bash_output(result: RunResult, timeout: float, workdir: str) -> str:
    """The text the model sees for one command's result."""
    output = result.output.removesuffix("\n")
    if result.status is RunStatus.TIMEOUT:
        note = timeout_note(timeout, result.restarted, workdir)
    elif result.status is RunStatus.SESSION_DIED:
        note = session_died_note(workdir)
    else:
        return output
    return f"{output}\n\n{note}" if output else note


def bash_result(result: RunResult, timeout: float, workdir: str) -> ToolResult:
    return ToolResult(
        output=bash_output(result, timeout, workdir),
        ok=result.status in (RunStatus.OK, RunStatus.OUTPUT_TRUNCATED),
        timed_out=result.status is RunStatus.TIMEOUT,
        restarted=result.restarted or result.status is RunStatus.SESSION_DIED,
        elapsed=result.elapsed,
    )


class BashTool:
    name = "bash"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        result = ctx.sandbox.run(body, timeout=ctx.command_timeout)
        return bash_result(result, ctx.command_timeout, ctx.sandbox.config.workdir)
