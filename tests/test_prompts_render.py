"""The chat format: exact bytes, stripping rules, and the prefix property prefix caching relies on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cwm_agent.prompts import templates as T
from cwm_agent.prompts.render import (
    BOS,
    EOT,
    SPECIAL_TOKENS,
    Message,
    Piece,
    continuation_pieces,
    find_special_tokens,
    generation_prompt,
    render_continuation,
    render_message,
    render_pieces,
    render_prompt,
    render_training,
)

CWM_LIMITS = {"session_timeout": 120, "context_size": 131072, "max_turns": 128}
"""CWM's SWE-bench limits (the config's defaults), as the model is told them."""

GEN = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_prompt_layout_is_byte_exact():
    text = render_prompt([Message.system("  sys \n"), Message.user("\nhello\n")])
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
    )


def test_generation_prompt_with_and_without_reasoning():
    assert generation_prompt() == GEN + "<think>\n"
    assert generation_prompt(reasoning=False) == GEN
    assert render_prompt([Message.user("hi")], reasoning=False).endswith("hi<|eot_id|>" + GEN)


def test_tool_bodies_keep_their_whitespace_but_user_bodies_do_not():
    body = "\n<output>\n  x  \n</output>\n"
    assert render_message(Message.tool("bash", body)) == (
        f"<|start_header_id|>tool: bash<|end_header_id|>\n\n{body}<|eot_id|>"
    )
    assert render_message(Message.user("  x  ")) == "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"


def test_trailing_assistant_message_is_an_open_generation_prefix():
    text = render_prompt([Message.user("q"), Message.assistant("<think>\n")])
    assert text.endswith("q<|eot_id|>" + GEN + "<think>\n")
    assert text.count("<think>") == 1


def test_training_render_strips_assistant_bodies_except_an_open_prefix():
    msgs = [Message.user(" q "), Message.assistant("<think>\nr\n</think>\nanswer\n")]
    assert render_training(msgs) == (
        BOS
        + "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\nr\n</think>\nanswer<|eot_id|>"
    )
    prefix = render_training([Message.user("q"), Message.assistant("<think>\n")], open_last=True)
    assert prefix.endswith(GEN + "<think>\n")
    assert not prefix.endswith(EOT)


@pytest.mark.parametrize("role", ["System", "tool:bash", "tool: ", "robot", "tool: a b"])
def test_unknown_roles_are_rejected(role):
    with pytest.raises(ValidationError):
        Message(role=role, content="x")


def test_tool_name_of_a_message():
    assert Message.tool("edit", "x").tool_name == "edit"
    assert Message.user("x").tool_name is None


def _episode():
    """A realistic 3-turn exchange: (messages so far, reply, messages the reply leads to)."""
    system = Message.system(T.system_prompt(**CWM_LIMITS))
    user = Message.user(T.issue_prompt("Division by zero in mean([])"))
    replies = [
        "Look first.\n</think>\nListing files.\n<tool: bash>\nls\n</tool>",
        "Found it.\n</think>\n<tool: edit>\nstats.py\n<<<<<<< SEARCH\n    return s / n\n=======\n"
        "    return s / n if n else 0.0\n>>>>>>> REPLACE\n</tool>  ",
        "Two calls.\n</think>\n<tool: bash>\na\n</tool>\n<tool: bash>\nb\n</tool>",
        "Done.\n</think>\n<tool: submit>\n/tmp/p.diff\n</tool><|eot_id|>",
    ]
    observations = [
        [Message.tool("bash", T.observation("stats.py\n", 127, 120000))],
        [Message.tool("edit", T.observation("  edited  ", 126, 119000))],
        [Message.user(T.format_error("MultipleToolCalls", "one tool per step"))],
        [Message.tool("submit", T.observation(T.submission_feedback("diff --git a/x b/x\n"), 124, 118000))],
    ]
    return [system, user], replies, observations


@pytest.mark.parametrize("reasoning", [True, False])
def test_incremental_prompts_equal_rendering_the_whole_dialogue(reasoning):
    history, replies, observations = _episode()
    prompt = render_prompt(history, reasoning)
    for reply, new in zip(replies, observations):
        nxt = prompt + render_continuation(reply, new, reasoning)
        prefix = "<think>\n" if reasoning else ""
        history = history + [Message.assistant(prefix + reply.removesuffix(EOT))] + new
        assert nxt == render_prompt(history, reasoning)
        assert nxt.startswith(prompt)
        prompt = nxt
    # Earlier thinking and the untouched reply whitespace stay in the history.
    assert "Look first.\n</think>" in prompt
    assert "REPLACE\n</tool>  <|eot_id|>" in prompt
    # A reply that already carried <|eot_id|> is not closed twice.
    assert "</tool><|eot_id|><|eot_id|>" not in prompt


def test_pieces_join_to_the_prompt_and_mark_special_tokens():
    history, replies, observations = _episode()
    pieces = render_pieces(history)
    assert "".join(p.text for p in pieces) == render_prompt(history)
    assert pieces[:5] == [
        Piece(BOS, True),
        Piece("<|start_header_id|>", True),
        Piece("system", False),
        Piece("<|end_header_id|>", True),
        Piece("\n\n", False),
    ]
    assert pieces[-2:] == [Piece("\n\n", False), Piece("<think>\n", False)]
    assert all(p.text in SPECIAL_TOKENS for p in pieces if p.is_special)
    assert all(p.text for p in pieces)
    cont = continuation_pieces(replies[0], observations[0])
    assert cont[0] == Piece(replies[0], False) and cont[1] == Piece(EOT, True)
    assert "".join(p.text for p in cont) == render_continuation(replies[0], observations[0])


def test_special_tokens_inside_bodies_are_detected():
    assert find_special_tokens("cat log: <|eot_id|> and <|begin_of_text|>") == [EOT, BOS]
    assert find_special_tokens("plain <tool: bash> text") == []


_text = st.lists(
    st.sampled_from(list("ab \n<>/|:") + ["<|eot_id|>", "</think>", "<think>\n", "\n\n"]), max_size=12
).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            _text, st.lists(st.tuples(st.sampled_from(["user", "tool: bash", "system"]), _text), min_size=1, max_size=3)
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_prefix_property_holds_for_any_replies_and_messages(turns, reasoning):
    history = [Message.system("s"), Message.user("u")]
    prompt = render_prompt(history, reasoning)
    for reply, new in turns:
        new_msgs = [Message(role=r, content=c) for r, c in new]
        prompt += render_continuation(reply, new_msgs, reasoning)
        history += [Message.assistant(("<think>\n" if reasoning else "") + reply.removesuffix(EOT))] + new_msgs
        assert prompt == render_prompt(history, reasoning)
