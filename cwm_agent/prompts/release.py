"""CWM's exact texts, read at run time from a checkout of CWM's release (never shipped with us).

The release's environment modules are parsed, not imported (they need Modal and more): string
constants are read from the module's assignments, and the messages of its format errors from the
f-strings of the `raise` statements that make them. A missing file or name is a `ReleaseError`
naming both (another version of the release, or not a checkout of it at all).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from cwm_agent.errors import ReleaseError
from cwm_agent.prompts.parse import ParseMessages
from cwm_agent.prompts.texts import Texts

ENV_FILE = "cwm/rl/envs/envs/swerl_tool.py"
TESTGEN_FILE = "cwm/rl/envs/envs/swerl_testgen_tool.py"
PROMPTS_FILE = "cwm/rl/envs/prompts.py"
PARSER_FILE = "cwm/rl/swerl/default_tools.py"
TOOLS_FILE = "cwm/rl/swerl/tools.py"


def _module(root: Path, rel: str) -> ast.Module:
    path = root / rel
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except OSError as exc:
        raise ReleaseError(
            f"--cwm-release {root}: cannot read {rel} ({exc.strerror or exc}); pass a checkout of "
            "github.com/facebookresearch/cwm"
        ) from None
    except SyntaxError as exc:
        raise ReleaseError(f"--cwm-release {root}: {rel} does not parse ({exc.msg}, line {exc.lineno})") from None


def _string_value(node: ast.AST) -> str | None:
    """A string constant, or a triple-quoted one with `.strip()` called on it, as the module computes it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "strip"
        and not node.args
        and (inner := _string_value(node.func.value)) is not None
    ):
        return inner.strip()
    return None


def _constants(tree: ast.Module) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _string_value(node.value)
            if value is not None:
                found[node.targets[0].id] = value
    return found


def _constant(root: Path, rel: str, name: str) -> str:
    value = _constants(_module(root, rel)).get(name)
    if value is None:
        raise ReleaseError(
            f"--cwm-release {root}: {rel} has no string constant {name} (another version of the release?)"
        )
    return value


Template = Callable[[dict[str, Any]], str]


def _template(node: ast.AST) -> Template:
    """A message expression (a string, or an f-string) as a function of its expressions' values,
    keyed by their source text (e.g. {"len(tool_calls)": 2})."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
        return lambda values: text
    if isinstance(node, ast.JoinedStr):
        parts: list[str | str] = []
        kinds: list[bool] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
                kinds.append(False)
            elif isinstance(value, ast.FormattedValue):
                parts.append(ast.unparse(value.value))
                kinds.append(True)

        def fill(values: dict[str, Any]) -> str:
            return "".join(str(values[p]) if is_expr else p for p, is_expr in zip(parts, kinds))

        return fill
    raise ValueError(ast.unparse(node))


def _raised_messages(tree: ast.AST, error: str) -> list[Template]:
    """The messages of every `raise ...ERROR(message)` in `tree`, in source order."""
    found: list[tuple[int, Template]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            func = node.exc.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == error:
                try:
                    found.append((node.lineno, _template(node.exc.args[0])))
                except ValueError:
                    continue
    return [template for _, template in sorted(found, key=lambda item: item[0])]


def _function(tree: ast.Module, name: str) -> ast.AST | None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def _parse_messages(root: Path) -> ParseMessages:
    parser = _module(root, PARSER_FILE)
    function = _function(parser, "parse_tool_calls")
    messages = _raised_messages(function, "FormatError") if function is not None else []
    if len(messages) != 4:
        raise ReleaseError(
            f"--cwm-release {root}: {PARSER_FILE}: parse_tool_calls does not raise the four format errors expected"
        )
    multiple, mismatch, no_call, empty = messages
    env = _module(root, ENV_FILE)
    step = _function(env, "step")
    think = _raised_messages(step, "FormatError") if step is not None else []
    tools = _module(root, TOOLS_FILE)
    apply_tool = _function(tools, "apply_tool")
    unknown = _raised_messages(apply_tool, "NoSuchToolError") if apply_tool is not None else []
    if not think or not unknown:
        missing = f"{ENV_FILE}: step's thinking check" if not think else f"{TOOLS_FILE}: apply_tool's NoSuchToolError"
        raise ReleaseError(f"--cwm-release {root}: cannot find {missing}")
    return ParseMessages(
        think_count=lambda count: think[0]({"num_ending_tokens": count}),
        multiple_calls=lambda count, names: multiple(
            {"len(tool_calls)": count, "', '.join(tool_names)": ", ".join(names)}
        ),
        tag_mismatch=lambda calls, opened, closed: mismatch(
            {"len(tool_calls)": calls, "num_opening_tags": opened, "num_closing_tags": closed}
        ),
        no_call=lambda: no_call({}),
        empty_body=lambda name: empty({"tool_name": name}),
        unknown_tool=lambda name: unknown[0]({"tool_name": name}),
    )


@lru_cache(maxsize=8)
def load_release_texts(root: Path) -> Texts:
    """Every text of an episode as CWM's environment (reasoning mode with the think tag) writes it."""
    root = Path(root)
    system_env = _constant(root, ENV_FILE, "SYSTEM_UBUNTU")
    issue = _constant(root, ENV_FILE, "USER_ISSUE_SOLVING")
    budget = _constant(root, ENV_FILE, "BUDGET_NOTICE_TEMPLATE")
    submission = _constant(root, ENV_FILE, "SUBMISSION_FEEDBACK_PROMPT")
    output = _constant(root, ENV_FILE, "FEEDBACK_OUTPUT_PROMPT")
    test_user = _constant(root, TESTGEN_FILE, "USER_TESTGEN")
    test_submission = _constant(root, TESTGEN_FILE, "SUBMISSION_FEEDBACK_PROMPT")
    head = _constant(root, PROMPTS_FILE, "CWM_THINKTAG_SYS_PROMPT")
    env_heading = _constant(root, PROMPTS_FILE, "ENV_PROMPT")
    description = _default_description(root)
    parse = _parse_messages(root)

    def system(timeout: float, context: int, turns: int, tools: Sequence[str]) -> str:
        environment = system_env.format(context_size=context, max_turns=turns, session_timeout=f"{int(timeout)}-second")
        opening = head.format(description=description).strip()
        section = env_heading.format(environment=environment.strip()).strip()
        return "\n\n".join([opening, section]).strip()

    return Texts(
        system=system,
        issue=lambda text, repo_root: issue.format(issue=text, repo_root=repo_root),
        test_generation=lambda text, repo_root: test_user.format(issue=text, repo_root=repo_root),
        output=lambda result: output.format(feedback=result),
        budget_template=budget,
        budget=lambda turns, tokens: budget.format(remaining_turns=turns, remaining_tokens=tokens),
        submission=lambda patch: submission.format(pred_patch=patch),
        test_submission=lambda test: test_submission.format(test=test),
        parse=parse,
        source=str(root),
    )


def _default_description(root: Path) -> str:
    """The default `description` argument of the release's system-prompt builder."""
    function = _function(_module(root, PROMPTS_FILE), "get_cwm_sys_prompt")
    if isinstance(function, ast.FunctionDef):
        args = function.args
        for arg, default in zip(args.args[len(args.args) - len(args.defaults) :], args.defaults):
            if arg.arg == "description" and (value := _string_value(default)) is not None:
                return value
    raise ReleaseError(f"--cwm-release {root}: {PROMPTS_FILE} has no get_cwm_sys_prompt(description=...) default")
