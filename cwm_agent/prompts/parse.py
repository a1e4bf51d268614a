"""Reading CWM's replies: the thinking, the visible response, and at most one tool call.

Every way a reply can be malformed is a `FormatError` subclass whose `kind` and message are
what the model reads back (`Kind: message`, see `FormatError.feedback`). Whether an error is
fed back (lenient) or ends the episode (strict) is the loop's policy, not the parser's.
"""

from __future__ import annotations

import re
from typing import Iterable

from pydantic import BaseModel, ConfigDict

from cwm_agent.prompts.render import THINK_END
from cwm_agent.prompts.templates import format_error

TOOL_OPEN = "<tool:"
TOOL_CLOSE = "</tool>"
# As in CWM's published SWE-RL parser: one whitespace after the colon, letters and
# underscores for the name, the body on its own lines.
TOOL_CALL_RE = re.compile(r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>", re.DOTALL)
_CALL_SHAPE = "<tool: NAME> on its own line, the input on the lines below it, then </tool> on its own line"


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    body: str


class ParsedReply(BaseModel):
    """A well-formed reply. `thinking` is None when reasoning is off; `response` is the stripped
    text after `</think>` (the whole reply when reasoning is off), tool call included."""

    model_config = ConfigDict(frozen=True)

    thinking: str | None
    response: str
    tool_call: ToolCall | None


class FormatError(ValueError):
    """A malformed reply. `kind` names the mistake; the message tells the model how to fix it."""

    kind = "FormatError"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def feedback(self) -> str:
        """The user message that answers the reply in lenient mode."""
        return format_error(self.kind, self.message)


class MissingThinkEnd(FormatError):
    kind = "MissingThinkEnd"


class MultipleThinkEnd(FormatError):
    kind = "MultipleThinkEnd"


class UnexpectedThinkStart(FormatError):
    kind = "UnexpectedThinkStart"


class MultipleToolCalls(FormatError):
    kind = "MultipleToolCalls"


class MalformedToolCall(FormatError):
    kind = "MalformedToolCall"


class EmptyToolBody(FormatError):
    kind = "EmptyToolBody"


class UnknownTool(FormatError):
    kind = "UnknownTool"


class NoToolCall(FormatError):
    kind = "NoToolCall"


def render_tool_call(name: str, body: str) -> str:
    """A call in the shape the parser accepts (for scripted replies and tests)."""
    return f"<tool: {name}>\n{body}\n</tool>"


def _split_thinking(text: str) -> tuple[str, str]:
    count = text.count(THINK_END)
    if count == 0:
        raise MissingThinkEnd(
            f"Your reply never closed its reasoning with {THINK_END}. Reason first, then write "
            f"{THINK_END} exactly once, then your response with one tool call."
        )
    if count > 1:
        raise MultipleThinkEnd(
            f"Your reply contains {THINK_END} {count} times. Close your reasoning exactly once "
            f"with {THINK_END} and do not write that tag anywhere else."
        )
    thinking, action = text.split(THINK_END, 1)
    return thinking, action


def _check_no_think_start(action: str) -> None:
    # A tool body may legitimately mention the tag (grep for it, write a file with it);
    # only the visible response around the call must not reopen reasoning.
    if "<think>" in TOOL_CALL_RE.sub("", action):
        raise UnexpectedThinkStart(
            f"Your reply opens a new <think> block after {THINK_END}. Put all reasoning before "
            f"{THINK_END}; after it write only your response and at most one tool call."
        )


def _find_call(action: str, allowed_tools: Iterable[str] | None) -> ToolCall | None:
    calls = TOOL_CALL_RE.findall(action)
    if len(calls) > 1:
        names = ", ".join(name for name, _ in calls)
        raise MultipleToolCalls(
            f"Your reply contains {len(calls)} tool calls ({names}), but each step may invoke "
            "only one tool. Keep a single call and make the next one in a later step."
        )
    opened, closed = action.count(TOOL_OPEN), action.count(TOOL_CLOSE)
    if opened != len(calls) or closed != len(calls):
        raise MalformedToolCall(
            f"Your reply has {opened} '{TOOL_OPEN}' opening tag(s) and {closed} '{TOOL_CLOSE}' "
            f"closing tag(s) but {len(calls)} well-formed tool call(s). Write exactly one call as "
            f"{_CALL_SHAPE}, where NAME is letters and underscores only, and use neither tag "
            "anywhere else in the reply."
        )
    if not calls:
        return None
    name, body = calls[0]
    if not body.strip():
        raise EmptyToolBody(
            f"Your call to the {name} tool has an empty body. Put its input on the lines between "
            f"<tool: {name}> and </tool>."
        )
    if allowed_tools is not None:
        allowed = list(allowed_tools)
        if name not in allowed:
            raise UnknownTool(
                f"There is no tool named '{name}'. Call one of the available tools: {', '.join(allowed)}."
            )
    return ToolCall(name=name, body=body)


def parse_reply(
    text: str,
    reasoning: bool = True,
    *,
    allowed_tools: Iterable[str] | None = None,
    require_tool_call: bool = False,
) -> ParsedReply:
    """Parse a reply as the server returned it (the prompt ended with `<think>\\n` in reasoning mode).

    Reasoning on: exactly one `</think>`; the action is what follows it and must not open
    another `<think>` outside the tool call's body. The action holds at most one
    `<tool: NAME>\\nBODY\\n</tool>` call, no stray tool tags, and a non-blank body. A reply without any call
    comes back with `tool_call=None` (a final response) unless `require_tool_call`, which raises NoToolCall.
    Raises only `FormatError` subclasses.
    """
    thinking: str | None = None
    action = text
    if reasoning:
        thinking, action = _split_thinking(text)
    call = _find_call(action, allowed_tools)
    if reasoning:
        _check_no_think_start(action)
    if call is None and require_tool_call:
        raise NoToolCall(
            "Your reply contains no tool call. Until your work is submitted, every step must "
            f"invoke exactly one tool, written as {_CALL_SHAPE}."
        )
    return ParsedReply(thinking=thinking, response=action.strip(), tool_call=call)
