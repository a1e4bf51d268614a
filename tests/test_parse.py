"""Reply parsing: what the loop executes, and what the model is told when a reply is malformed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwm_agent.prompts.parse import TOOL_CALL_RE, FormatError, NoSuchToolError, ToolCall, parse_reply, render_tool_call

EDIT_BODY = "src/app.py\n<<<<<<< SEARCH\n    x = 1\n=======\n    x = 2\n>>>>>>> REPLACE"


def test_thinking_response_and_call_are_split():
    reply = f"Let me fix it.\n</think>\nApplying the fix.\n\n<tool: edit>\n{EDIT_BODY}\n</tool>\n"
    parsed = parse_reply(reply)
    assert parsed.thinking == "Let me fix it.\n"
    assert parsed.response.startswith("Applying the fix.") and parsed.response.endswith("</tool>")
    assert parsed.tool_call == ToolCall(name="edit", body=EDIT_BODY)


def test_body_whitespace_is_kept_exactly():
    body = "  cd /testbed\n\tls -la  \n"
    parsed = parse_reply(f"t</think>{render_tool_call('bash', body)}")
    assert parsed.tool_call.body == body


def test_think_tags_inside_a_tool_body_are_not_a_stray_opening():
    body = "grep -rn '<think>' src/"
    assert parse_reply(f"t</think>{render_tool_call('bash', body)}").tool_call.body == body
    # as in CWM's parser, a <think> after </think> is no error of its own
    assert parse_reply(f"t</think><think>\n{render_tool_call('bash', body)}").tool_call.body == body


def test_a_final_response_without_a_call_is_a_format_error_the_loop_reads():
    with pytest.raises(FormatError) as err:
        parse_reply("done\n</think>\n## Issue Summary\n\nFixed.\n")
    assert err.value.thinking_closed_once


def test_reasoning_off_parses_the_whole_reply():
    parsed = parse_reply("<tool: bash>\npwd\n</tool>", reasoning=False)
    assert parsed.thinking is None and parsed.tool_call.name == "bash"
    # </think> means nothing without reasoning: no error for it.
    assert parse_reply("a</think>\n<tool: bash>\nls\n</tool>", reasoning=False).tool_call.name == "bash"


@pytest.mark.parametrize(
    "reply, error, fragment",
    [
        ("no close <tool: bash>\nls\n</tool>", FormatError, "0 times"),
        ("a</think>b</think><tool: bash>\nls\n</tool>", FormatError, "2 times"),
        ("a</think><tool: bash>\nls\n</tool><tool: submit>\np\n</tool>", FormatError, "bash, submit"),
        ("a</think><tool: bash>ls</tool>", FormatError, "1 '<tool:'"),
        ("a</think><tool: bash>\nls\n", FormatError, "0 '</tool>'"),
        ("a</think><tool: run-tests>\nx\n</tool>", FormatError, "0 well-formed"),
        ("a</think>no call at all", FormatError, "no tool"),
        ("a</think><tool: bash>\n \n</tool>", FormatError, "'bash'"),
        ("a</think><tool: python>\nprint(1)\n</tool>", NoSuchToolError, "'python'"),
    ],
)
def test_each_malformed_reply_raises_with_cwms_kind(reply, error, fragment):
    with pytest.raises(error) as err:
        parse_reply(reply, tools=["bash", "edit", "create", "submit"])
    assert fragment in err.value.message
    assert err.value.feedback() == f"{error.kind}: {err.value.message}"
    assert type(err.value) is error


def test_only_a_wrong_think_count_is_marked_as_such():
    with pytest.raises(FormatError) as err:
        parse_reply("no close")
    assert not err.value.thinking_closed_once
    with pytest.raises(FormatError) as err:
        parse_reply("a</think>no call")
    assert err.value.thinking_closed_once


# ---- property-based: no input crashes the parser; valid calls round-trip ------------------

FRAGMENTS = [
    "<tool: ",
    "<tool:",
    "</tool>",
    "<tool: bash>",
    "</think>",
    "<think>",
    "<think>\n",
    ">",
    "<",
    "\n",
    "\n\n",
    " ",
    "\t",
    "bash",
    "submit",
    "edit",
    "my_tool",
    "ls -la",
    "<<<<<<< SEARCH",
    "=======",
    ">>>>>>> REPLACE",
    "<|eot_id|>",
    "é",
    "\r\n",
    "\x00",
]
fragment_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=25).map("".join)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), fragment_text), st.booleans(), st.booleans(), st.booleans())
def test_no_input_crashes_the_parser(text, reasoning, restrict, require):
    allowed = ["bash", "edit", "create", "submit"] if restrict else None
    try:
        parsed = parse_reply(text, reasoning, tools=allowed)
    except FormatError as err:
        assert err.kind and err.message and err.feedback().startswith(err.kind + ": ")
        return
    action = text.split("</think>", 1)[1] if reasoning else text
    if reasoning:
        assert text.count("</think>") == 1 and parsed.thinking is not None
    assert TOOL_CALL_RE.search(action)
    assert action.count("<tool:") == 1 and action.count("</tool>") == 1
    assert parsed.tool_call.body.strip()
    assert render_tool_call(parsed.tool_call.name, parsed.tool_call.body) in action


tool_names = st.from_regex(r"[A-Za-z_]{1,12}", fullmatch=True)
bodies = st.text(min_size=1).filter(
    lambda b: b.strip() and "<tool:" not in b and "</tool>" not in b and "</think>" not in b
)
free_text = st.text().filter(
    lambda t: "<tool:" not in t and "</tool>" not in t and "</think>" not in t and "<think>" not in t
)


@settings(max_examples=400, deadline=None)
@given(tool_names, bodies, free_text, free_text, free_text)
def test_rendered_calls_round_trip(name, body, thinking, before, after):
    reply = f"{thinking}</think>{before}{render_tool_call(name, body)}{after}"
    parsed = parse_reply(reply)
    assert parsed.tool_call == ToolCall(name=name, body=body)
    assert parsed.thinking == thinking
    no_think = parse_reply(f"{before}{render_tool_call(name, body)}{after}", reasoning=False)
    assert no_think.tool_call == ToolCall(name=name, body=body)
