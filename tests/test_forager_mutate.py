"""Mutation operators, candidate order and issue text: what a task's bug and report look like (no Docker)."""

from __future__ import annotations

import ast
import difflib

from cwm_agent.forager.generate import default_repo, order_candidates
from cwm_agent.forager.issue import issue_text
from cwm_agent.forager.mutate import OPERATORS, module_mutations

SOURCE = '''\
"""A module."""
import math
import re
from os import path, sep


def clamp(value, low, high):
    """Keep value within [low, high]."""
    if value < low:  # below
        return low
    elif value > high:
        return high
    else:
        return value


def total(items, start=0):
    result = start
    for i in range(len(items)):
        result += items[i] * 2
    return result


def words(text):
    if not text or text.isspace():
        return []
    parts = re.split(r"\\s+", text.strip())
    first = parts[0]
    print(first, sep)
    return parts[1:-1]


def area(r):
    return math.pi * r ** 2 - path.sep.count("/")


def diff(a, b):
    return a - b
'''


def changes(mutation) -> list[str]:
    """The diff lines of one mutation (removed with '-', added with '+')."""
    new = mutation.apply(SOURCE)
    return [
        line
        for line in difflib.unified_diff(SOURCE.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("---", "+++"))
    ]


def by_operator() -> dict[str, list]:
    out: dict[str, list] = {}
    for m in module_mutations("mod.py", SOURCE):
        out.setdefault(m.operator, []).append(m)
    return out


def test_every_operator_makes_small_bugs_that_still_parse():
    found = by_operator()
    assert set(found) == set(OPERATORS)
    for mutations in found.values():
        for m in mutations:
            new = m.apply(SOURCE)
            ast.parse(new)
            assert new != SOURCE
            assert 1 <= len([c for c in changes(m) if c.startswith("-")]) <= 6, changes(m)
    keys = [m.key for ms in found.values() for m in ms]
    assert len(keys) == len(set(keys)), "a mutation appears twice"


def test_operators_edit_only_the_changed_token_keeping_comments():
    found = by_operator()
    compare = {tuple(changes(m)) for m in found["compare"]}
    assert ("-    if value < low:  # below", "+    if value <= low:  # below") in compare
    assert ("-    elif value > high:", "+    elif value >= high:") in compare
    assert ("-        result += items[i] * 2", "+        result -= items[i] * 2") in {
        tuple(changes(m)) for m in found["arith"]
    }
    assert ("-    if not text or text.isspace():", "+    if not text and text.isspace():") in {
        tuple(changes(m)) for m in found["boolean"]
    }
    negated = {tuple(changes(m)) for m in found["negate"]}
    assert ("-    if not text or text.isspace():", "+    if not (not text or text.isspace()):") in negated
    off = {tuple(changes(m)) for m in found["off_by_one"]}
    assert ("-    for i in range(len(items)):", "+    for i in range(len(items) - 1):") in off
    assert ("-    return parts[1:-1]", "+    return parts[2:-1]") in off
    assert ("-    first = parts[0]", "+    first = parts[1]") in off
    assert ("-    return a - b", "+    return b - a") in {tuple(changes(m)) for m in found["swap_vars"]}
    assert ("-    print(first, sep)", "+    print(sep, first)") in {tuple(changes(m)) for m in found["swap_args"]}
    assert ("-    print(first, sep)", "+    print(first)") in {tuple(changes(m)) for m in found["drop_arg"]}


def test_removals_take_whole_lines_or_leave_pass():
    found = by_operator()
    assert ("-    first = parts[0]",) in {tuple(changes(m)) for m in found["remove_statement"]}
    returns = {tuple(changes(m)) for m in found["remove_return"]}
    assert ("-        return low", "+        pass") in returns  # the only statement of its block
    branches = {tuple(changes(m)) for m in found["remove_branch"]}
    assert ("-    elif value > high:", "-        return high", "-    else:", "-        return value") in branches
    assert ("-    if not text or text.isspace():", "-        return []") in branches
    imports = {tuple(changes(m)) for m in found["remove_import"]}
    assert ("-import math",) in imports
    assert ("-from os import path, sep", "+from os import sep") in imports
    # `re` is used only inside `words`; every remove_import names the functions whose tests matter
    assert all(m.users for m in found["remove_import"])


def test_only_covered_functions_are_mutated():
    tree = ast.parse(SOURCE)
    clamp = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "clamp")
    mutations = module_mutations("mod.py", SOURCE, {clamp.lineno})
    assert mutations and {m.function for m in mutations} == {"clamp"}


def test_order_is_fixed_by_the_seed_and_spreads_over_functions():
    mutations = module_mutations("mod.py", SOURCE)
    one = [m.key for m in order_candidates(mutations, 3)]
    assert one == [m.key for m in order_candidates(list(reversed(mutations)), 3)]
    assert one != [m.key for m in order_candidates(mutations, 4)]
    first = order_candidates(mutations, 3)[:5]
    assert len({m.function for m in first}) == 5  # round-robin over the five functions


def test_issue_text_shows_the_failure_never_the_original_code():
    patch = (
        "diff --git a/mod.py b/mod.py\n--- a/mod.py\n+++ b/mod.py\n@@ -9 +9 @@\n"
        "-    if value <= low:  # below\n+    if value < low:  # below\n"
    )
    mutated = SOURCE.replace("if value < low:", "if value <= low:")
    failure = (
        "tests/test_mod.py:3: in test_clamp\n    assert clamp(1, 1, 3) == 1\n"
        "mod.py:9: in clamp\n    if value < low:  # below\nE   AssertionError: <object at 0x7f3a2b1c9d80>"
    )
    text = issue_text(["tests/test_mod.py::test_clamp"], {"tests/test_mod.py::test_clamp": failure}, patch, mutated)
    assert "`test_clamp` fails" in text
    assert "AssertionError" in text and "tests/test_mod.py::test_clamp" in text
    assert "if value < low" not in text  # the original line, even where a traceback would show it
    assert "0x7f3a2b1c9d80" not in text  # addresses vary between runs: the same seed gives the same text


def test_default_repo_from_image_names():
    assert default_repo("sweb.eval.x86_64.cwm-local__inflection-1:latest") == "cwm-local/inflection"
    assert default_repo("swebench/sweb.eval.x86_64.django_1776_django-11099:latest") == "django/django"
    assert default_repo("myorg/project:v1") == "myorg/project"
    assert default_repo("project") == "local/project"
