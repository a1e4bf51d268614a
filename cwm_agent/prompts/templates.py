"""The texts CWM is prompted with, filled from the files in `templates/`.

Shapes (tags, headings, bullet layout) match what the model was trained on; the wording is
ours. Only the reasoning preamble is the model's own text, used verbatim because it is what
switches reasoning mode on.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

TOOL_NAMES = ("bash", "edit", "create", "submit")
TRUNCATION_MARK = "[...]"


@cache
def load_template(name: str) -> str:
    """The text of `templates/NAME.txt`, without the file's final newline."""
    path = resources.files("cwm_agent.prompts") / "templates" / f"{name}.txt"
    return path.read_text(encoding="utf-8").rstrip("\n")


def fill(template: str, **values: object) -> str:
    """Replace each `{name}` given in `values`, in one pass.

    Unlike `str.format`, any other braces (an f-string or dict in a code example) stay as
    they are, and braces inside the values (issue texts, patches, tool output) are never
    read as placeholders. Each value must have its placeholder, so a typo fails loudly.
    """
    unused = sorted(name for name in values if "{" + name + "}" not in template)
    if unused:
        raise ValueError(f"template has no placeholder for {unused}")
    if not values:
        return template
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda m: str(values[m.group(0)[1:-1]]), template)


def preamble() -> str:
    """The verbatim system-prompt opening that turns CWM's reasoning mode on."""
    return load_template("preamble")


def tool_spec(name: str) -> str:
    """The spec of one tool: the call's shape with placeholders, then one line on what it does."""
    if name not in TOOL_NAMES:
        raise ValueError(f"unknown tool {name!r}; known tools: {', '.join(TOOL_NAMES)}")
    return load_template(f"tool_{name}")


def environment(
    session_timeout: float,
    context_size: int,
    max_turns: int,
    tools: tuple[str, ...] | list[str] = TOOL_NAMES,
) -> str:
    """The environment description: the container, the limits, the tool specs, the rules."""
    if not tools:
        raise ValueError("at least one tool is needed")
    if len(set(tools)) != len(tools):
        raise ValueError(f"tools listed twice: {list(tools)}")
    intro = fill(
        load_template("environment"),
        session_timeout=int(session_timeout),
        context_size=int(context_size),
        max_turns=int(max_turns),
    )
    return "\n\n".join([intro, *(tool_spec(t) for t in tools), load_template("tool_rules")])


def system_prompt(
    session_timeout: float,
    context_size: int,
    max_turns: int,
    tools: tuple[str, ...] | list[str] = TOOL_NAMES,
) -> str:
    """Preamble + `# Environment` section: the whole system message of an agentic episode."""
    env = environment(session_timeout, context_size, max_turns, tools)
    return f"{preamble()}\n\n# Environment\n\n{env}"


def issue_prompt(problem_statement: str, repo_root: str = "/testbed") -> str:
    """The user message of an issue-solving (SWE-bench) episode: fix the issue, submit a diff's path.

    The issue text is inserted as given; capping it (8192 tokens, keeping its end) is the
    loop's job since it needs the tokenizer.
    """
    return fill(load_template("issue"), problem_statement=problem_statement, repo_root=repo_root)


def test_generation_prompt(problem_statement: str, repo_root: str = "/testbed") -> str:
    """The user message of a test-generation episode: write and submit a standalone `test_issue.py`."""
    return fill(load_template("test_generation"), problem_statement=problem_statement, repo_root=repo_root)


def budget_block(remaining_turns: int, remaining_tokens: int) -> str:
    return fill(load_template("budget"), remaining_turns=remaining_turns, remaining_tokens=remaining_tokens)


def output_block(result: str) -> str:
    return fill(load_template("output"), result=result)


def observation(result: str, remaining_turns: int, remaining_tokens: int) -> str:
    """The body of a `tool: NAME` message: the result in `<output>`, a blank line, the budget."""
    return f"{output_block(result)}\n\n{budget_block(remaining_turns, remaining_tokens)}"


def submission_feedback(patch: str) -> str:
    """What a successful patch submission answers (the `result` passed to `observation`)."""
    return fill(load_template("submission_patch"), patch=patch)


def test_submission_feedback(test: str) -> str:
    """What a successful test submission (test-generation task) answers."""
    return fill(load_template("submission_test"), test=test)


def format_error(kind: str, message: str) -> str:
    """The user message answering a malformed reply: `Kind: message`, no output or budget wrapper."""
    return f"{kind}: {message}"


def truncate_right(text: str, keep_chars: int) -> str:
    """Keep the first `keep_chars` characters, marking the cut with `[...]` (tool output)."""
    if keep_chars < 0:
        raise ValueError("keep_chars must be >= 0")
    return text if len(text) <= keep_chars else text[:keep_chars] + TRUNCATION_MARK


def truncate_left(text: str, keep_chars: int) -> str:
    """Keep the last `keep_chars` characters, marking the cut with `[...]` (issue text)."""
    if keep_chars < 0:
        raise ValueError("keep_chars must be >= 0")
    if len(text) <= keep_chars:
        return text
    return TRUNCATION_MARK + (text[-keep_chars:] if keep_chars else "")
