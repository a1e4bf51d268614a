"""The prompt texts: the verbatim preamble, the exact tool-spec shapes, and safe filling."""

from __future__ import annotations

import re

import pytest

from cwm_agent.prompts import templates as T

CWM_LIMITS = {"session_timeout": 120, "context_size": 131072, "max_turns": 128}
"""CWM's SWE-bench limits (the config's defaults), as the model is told them."""

PREAMBLE = (
    "You are a helpful AI assistant. You always reason before responding, using the following format:"
    "\n\n<think>\nyour internal reasoning\n</think>\nyour external response"
)
SHAPES = {
    "bash": "<tool: bash>\n[command(s)]\n</tool>\n",
    "edit": (
        "<tool: edit>\n[path]\n<<<<<<< SEARCH\n[search_lines]\n=======\n[replacement_lines]\n>>>>>>> REPLACE\n</tool>\n"
    ),
    "create": "<tool: create>\n[path]\n[content]\n</tool>\n",
    "submit": "<tool: submit>\n[result]\n</tool>\n",
}


def test_system_prompt_opens_with_the_verbatim_preamble_then_the_environment():
    text = T.system_prompt(**CWM_LIMITS)
    assert text.startswith(PREAMBLE + "\n\n# Environment\n\n")
    assert T.preamble() == PREAMBLE


@pytest.mark.parametrize("name", T.TOOL_NAMES)
def test_each_tool_spec_is_the_exact_shape_and_one_line_of_description(name):
    spec = T.tool_spec(name)
    assert spec.startswith(SHAPES[name])
    description = spec[len(SHAPES[name]) :]
    assert description and "\n" not in description
    assert "\n\n" + spec + "\n\n" in T.system_prompt(**CWM_LIMITS)


def test_system_prompt_settings_and_tool_subset():
    text = T.system_prompt(session_timeout=30.0, context_size=65536, max_turns=50, tools=("bash", "submit"))
    assert "30-second" in text and "65536 tokens" in text and "50 turns" in text
    assert "<tool: edit>" not in text and "<tool: create>" not in text
    specs = re.findall(r"^<tool: (\w+)>$", text, re.M)
    assert specs == ["bash", "submit"]
    # Specs come after the environment paragraph; the requirements close the message.
    assert text.index("65536 tokens") < text.index("<tool: bash>")
    assert text.endswith(T.load_template("tool_rules"))
    assert T.load_template("tool_rules").startswith("REQUIREMENTS:\n* ")


def test_default_system_prompt_has_the_swebench_limits():
    text = T.system_prompt(**CWM_LIMITS)
    assert "120-second" in text and "131072 tokens" in text and "128 turns" in text
    assert re.findall(r"^<tool: (\w+)>$", text, re.M) == list(T.TOOL_NAMES)
    assert "{" not in text


@pytest.mark.parametrize("tools", [(), ("bash", "bash"), ("bash", "python")])
def test_bad_tool_lists_are_refused(tools):
    with pytest.raises(ValueError):
        T.system_prompt(**CWM_LIMITS, tools=tools)


def test_issue_prompt_wraps_the_issue_and_keeps_its_braces():
    issue = "KeyError for {name} in f'{x}' and {repo_root} with {{braces}}\n"
    text = T.issue_prompt(issue)
    assert f"<issue_description>\n{issue}\n</issue_description>" in text
    assert "/testbed" in text and "git diff" in text and "<tool: submit>" in text
    for heading in (
        "Issue Summary",
        "Investigation and Reproduction",
        "Solution and Code Changes",
        "Testing and Verification",
    ):
        assert f"\n## {heading}\n" in text
    assert T.issue_prompt("x", repo_root="/src").count("/src") == 1


def test_test_generation_prompt_asks_for_a_standalone_script_with_three_verdicts():
    text = T.test_generation_prompt("Bug {here}")
    assert "<issue_description>\nBug {here}\n</issue_description>" in text
    for needle in (
        "test_issue.py",
        "python test_issue.py",
        "pytest",
        "unittest",
        '"Issue reproduced"',
        '"Issue resolved"',
        '"Other issues"',
        "<tool: submit>\ntest_issue.py\n</tool>",
        "/testbed",
    ):
        assert needle in text
    # The f-string in the code example is not a placeholder.
    assert '{value}"' in text


def test_observation_budget_submission_and_format_error_shapes():
    assert T.observation("a\nb", 3, 1000) == (
        "<output>\na\nb\n</output>\n\n<budget>\n* Remaining turns: 3\n* Remaining tokens: 1000\n</budget>"
    )
    assert T.observation("", 0, -5).startswith("<output>\n\n</output>\n\n")
    patch = "diff --git a/x b/x\n+{ok}\n"
    fb = T.submission_feedback(patch)
    assert f"\n\n<submission>\n{patch}\n</submission>\n\n" in fb
    assert "final submission" in fb
    assert "<submission>\nprint(1)\n</submission>" in T.test_submission_feedback("print(1)")
    assert T.format_error("EmptyToolBody", "put input") == "EmptyToolBody: put input"


def test_fill_rejects_unknown_placeholders_and_is_single_pass():
    assert T.fill("{a}-{b}", a="{b}", b="1") == "{b}-1"
    with pytest.raises(ValueError):
        T.fill("{a}", a=1, typo=2)


def test_truncation_marks_the_cut():
    assert T.truncate_right("abcdef", 3) == "abc[...]"
    assert T.truncate_right("abc", 3) == "abc"
    assert T.truncate_left("abcdef", 2) == "[...]ef"
    assert T.truncate_left("abcdef", 0) == "[...]"
    with pytest.raises(ValueError):
        T.truncate_right("x", -1)


def test_every_template_file_ships_with_the_package():
    from importlib import resources

    names = sorted(
        p.name for p in (resources.files("cwm_agent.prompts") / "templates").iterdir() if p.name.endswith(".txt")
    )
    assert {
        "preamble.txt",
        "environment.txt",
        "issue.txt",
        "test_generation.txt",
        "budget.txt",
        "submission_patch.txt",
        "tool_bash.txt",
        "tool_rules.txt",
    } <= set(names)
