"""The agent's tools: `bash`, `edit`, `create`, `submit`, acting on a sandbox.

`run_tool(name, body, ctx)` is what the loop calls with the parsed `<tool: NAME>` call; the
returned `ToolResult.output` goes inside `<output>` in the observation, exactly as it is (an
accepted submission's output is the submitted text, which the loop wraps in the submission
feedback first). Behaviour is CWM's; texts are the project's own unless `ToolContext.cwm_release`
names a checkout of CWM's release (see `tools.release`).
"""

from __future__ import annotations

import time

from cwm_agent.tools.base import SubmitKind, Tool, ToolContext, ToolResult, failure
from cwm_agent.tools.bash import BashTool
from cwm_agent.tools.create import CreateTool
from cwm_agent.tools.edit import EditTool
from cwm_agent.tools.submit import SubmitTool

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (BashTool(), EditTool(), CreateTool(), SubmitTool())}
"""Every tool by name, in the order of CWM's tool specs."""


def run_tool(name: str, body: str, ctx: ToolContext, tools: dict[str, Tool] | None = None) -> ToolResult:
    """Run the tool `name` on `body`; an unknown name is an ok=False result listing the tools.

    `tools` narrows the set (e.g. an episode offering only bash and submit).
    """
    available = TOOLS if tools is None else tools
    tool = available.get(name)
    if tool is None:
        names = ", ".join(available)
        return failure(f"There is no tool named {name!r}. The available tools are: {names}.")
    started = time.monotonic()
    result = tool(body, ctx)
    result.elapsed = time.monotonic() - started
    return result


__all__ = ["TOOLS", "SubmitKind", "Tool", "ToolContext", "ToolResult", "run_tool"]
