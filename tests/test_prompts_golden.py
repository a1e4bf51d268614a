"""Golden files pin the exact bytes CWM is prompted with.

A wording change shows up as a diff in `tests/golden/`; review it, then regenerate with
`UPDATE_GOLDEN=1 pytest tests/test_prompts_golden.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cwm_agent.prompts import templates as T
from cwm_agent.prompts.parse import FormatError, parse_reply
from cwm_agent.prompts.render import Message, render_continuation, render_prompt, render_training

CWM_LIMITS = {"session_timeout": 120, "context_size": 131072, "max_turns": 128}
"""CWM's SWE-bench limits (the config's defaults), as the model is told them."""

GOLDEN = Path(__file__).parent / "golden"
ISSUE = "`mean([])` raises ZeroDivisionError instead of returning 0.0.\n\nExpected: `{}` -> 0.0\n"
PATCH = (
    "diff --git a/stats.py b/stats.py\n--- a/stats.py\n+++ b/stats.py\n@@ -1,2 +1,2 @@\n"
    " def mean(xs):\n-    return sum(xs) / len(xs)\n+    return sum(xs) / len(xs) if xs else 0.0\n"
)
REPLIES = [
    "The issue is about mean([]). Let me look at the repository first.\n</think>\n"
    "I'll start by listing the files.\n\n<tool: bash>\nls && grep -n 'def mean' -r .\n</tool>",
    "Now fix and check.\n</think>\n<tool: edit>\nstats.py\n<<<<<<< SEARCH\n    return sum(xs) / len(xs)\n"
    "=======\n    return sum(xs) / len(xs) if xs else 0.0\n>>>>>>> REPLACE\n</tool>\n"
    "<tool: bash>\npython -c 'import stats; print(stats.mean([]))'\n</tool>",
    "Only one call per step. Write the patch and submit.\n</think>\n<tool: submit>\n/tmp/fix.diff\n</tool>",
    "The submission is correct.\n</think>\n## Issue Summary\n\n`mean([])` divided by zero.\n\n"
    "## Solution and Code Changes\n\nReturn 0.0 for an empty list.\n",
]


def _dialogue() -> tuple[str, list[Message]]:
    """An episode built the way the loop builds it: each prompt extends the previous one."""
    messages = [Message.system(T.system_prompt(**CWM_LIMITS)), Message.user(T.issue_prompt(ISSUE))]
    prompt = render_prompt(messages)
    answers = [
        Message.tool("bash", T.observation("stats.py\n./stats.py:1:def mean(xs):", 127, 126500)),
        None,  # the parser's feedback for the two-call reply
        Message.tool("submit", T.observation(T.submission_feedback(PATCH.removesuffix("\n")), 125, 124900)),
    ]
    for reply, answer in zip(REPLIES, answers):
        if answer is None:
            with pytest.raises(FormatError) as err:
                parse_reply(reply)
            answer = Message.user(err.value.feedback())
        prompt += render_continuation(reply, [answer])
        messages += [Message.assistant("<think>\n" + reply), answer]
    with pytest.raises(FormatError):  # the final response has no call: after a submission it ends the episode
        parse_reply(REPLIES[-1])
    messages.append(Message.assistant("<think>\n" + REPLIES[-1]))
    return prompt, messages


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    data = text.encode("utf-8")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert path.read_bytes() == data, f"{name} changed: review, then regenerate with UPDATE_GOLDEN=1"


def test_default_system_prompt_golden():
    _check("system_prompt.txt", T.system_prompt(**CWM_LIMITS))


def test_test_generation_prompt_golden():
    _check("test_generation_prompt.txt", T.test_generation_prompt(ISSUE))


def test_multi_turn_dialogue_golden():
    prompt, messages = _dialogue()
    # The incremental prompt is the whole dialogue rendered at once (minus the final response,
    # which the model has not written yet at that point).
    assert prompt == render_prompt(messages[:-1])
    _check("dialogue_prompt.txt", prompt)
    _check("dialogue_training.txt", render_training(messages))


def test_dialogue_has_the_expected_turn_structure():
    prompt, _ = _dialogue()
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful")
    assert prompt.count("<|start_header_id|>tool: bash<|end_header_id|>\n\n<output>\n") == 1
    assert "<|start_header_id|>user<|end_header_id|>\n\nFormatError: " in prompt
    assert "\n</output>\n\n<budget>\n* Remaining turns: 125\n* Remaining tokens: 124900\n</budget><|eot_id|>" in prompt
    assert f"<submission>\n{PATCH}</submission>" in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
