"""Reading CWM's replies as CWM's environment reads them.

A reply is well formed when (in reasoning mode) it holds `</think>` exactly once and, after it,
exactly one `<tool: NAME>\\nBODY\\n</tool>` call with a non-blank body, no other tool tags, and a
NAME among the episode's tools. Anything else raises a `FormatError` (or `NoSuchToolError` for an
unknown NAME) whose `feedback()` is the user message the model reads: `Kind: message`.

What a malformed reply does to the episode (answered before a submission, ending it after one,
ending it at once in the test-generation episode) is the loop's business, not the parser's.
The wording of each message is a `ParseMessages`: ours by default, CWM's own when read from a
checkout of its release (`cwm_agent.prompts.release`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from cwm_agent.prompts.render import THINK_END

TOOL_OPEN = "<tool:"
TOOL_CLOSE = "</tool>"
# One whitespace after the colon, letters and underscores for the name, the body on its own lines.
TOOL_CALL_RE = re.compile(r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>", re.DOTALL)
_CALL_SHAPE = "<tool: NAME> on its own line, the input on the lines below it, then </tool> on its own line"


@dataclass(frozen=True)
class ParseMessages:
    """What the model is told for each kind of malformed reply (each a function of the facts)."""

    think_count: Callable[[int], str]
    multiple_calls: Callable[[int, list[str]], str]
    tag_mismatch: Callable[[int, int, int], str]
    """(well-formed calls, opening tags, closing tags)"""
    no_call: Callable[[], str]
    empty_body: Callable[[str], str]
    unknown_tool: Callable[[str], str]


OUR_MESSAGES = ParseMessages(
    think_count=lambda count: (
        f"A reply must close its reasoning with {THINK_END} exactly once; this one has it {count} times."
    ),
    multiple_calls=lambda count, names: (
        f"Found {count} tool calls ({', '.join(names)}), but a step may invoke only one tool. "
        "Keep a single <tool:...></tool> block and make the next call in a later step."
    ),
    tag_mismatch=lambda calls, opened, closed: (
        f"The tool tags do not add up: {calls} well-formed call(s), {opened} '{TOOL_OPEN}' and {closed} "
        f"'{TOOL_CLOSE}' tag(s). Write exactly one call as {_CALL_SHAPE}."
    ),
    no_call=lambda: "The reply invokes no tool.",
    empty_body=lambda name: f"The call to '{name}' has an empty input; put its input between the tags.",
    unknown_tool=lambda name: f"There is no tool named '{name}'.",
)


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    body: str


class ParsedReply(BaseModel):
    """A well-formed reply: the thinking (None when reasoning is off), the text after `</think>`
    (the whole reply when reasoning is off), and its one tool call."""

    model_config = ConfigDict(frozen=True)

    thinking: str | None
    response: str
    tool_call: ToolCall


class FormatError(ValueError):
    """A malformed reply; `feedback()` is the user message that answers it."""

    kind = "FormatError"

    def __init__(self, message: str, *, thinking_closed_once: bool = True):
        super().__init__(message)
        self.message = message
        self.thinking_closed_once = thinking_closed_once
        """False when the reply did not close its reasoning exactly once: after a submission such a
        reply is answered (like before one) instead of ending the episode, as in CWM's environment."""

    def feedback(self) -> str:
        return f"{self.kind}: {self.message}"


class NoSuchToolError(FormatError):
    """A well-formed call of a tool the episode does not have."""

    kind = "NoSuchToolError"


def render_tool_call(name: str, body: str) -> str:
    """A call in the shape the parser accepts (for scripted replies and tests)."""
    return f"<tool: {name}>\n{body}\n</tool>"


def parse_reply(
    text: str,
    reasoning: bool = True,
    *,
    tools: Iterable[str] | None = None,
    messages: ParseMessages = OUR_MESSAGES,
) -> ParsedReply:
    """Parse a reply as the server returned it (after the prompt's `<think>\\n` in reasoning mode).

    The checks run in CWM's order: the `</think>` count, then more than one call, then stray tags,
    then no call, then an empty body, then (with `tools`) an unknown name. Raises only FormatError.
    """
    thinking: str | None = None
    action = text
    if reasoning:
        count = text.count(THINK_END)
        if count != 1:
            raise FormatError(messages.think_count(count), thinking_closed_once=False)
        thinking, action = text.split(THINK_END, 1)
    calls = TOOL_CALL_RE.findall(action)
    if len(calls) > 1:
        raise FormatError(messages.multiple_calls(len(calls), [name for name, _ in calls]))
    opened, closed = action.count(TOOL_OPEN), action.count(TOOL_CLOSE)
    if opened != len(calls) or closed != len(calls):
        raise FormatError(messages.tag_mismatch(len(calls), opened, closed))
    if not calls:
        raise FormatError(messages.no_call())
    name, body = calls[0]
    if not body.strip():
        raise FormatError(messages.empty_body(name))
    if tools is not None and name not in set(tools):
        raise NoSuchToolError(messages.unknown_tool(name))
    return ParsedReply(thinking=thinking, response=action.strip(), tool_call=ToolCall(name=name, body=body))
