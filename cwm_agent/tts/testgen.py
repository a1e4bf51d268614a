"""Generated reproduction tests: what a test must be to be run, and what its output says.

CWM's test-generation episode writes a standalone `test_issue.py`, run as `python test_issue.py`
from the repository root, that prints `Issue reproduced`, `Issue resolved` or `Other issues`.
A test is kept for selection only if its source holds both of the first two strings, parses as
Python, and on the unpatched repository prints `Issue reproduced` and neither other line (the
rule of CWM's test-generation environment).
"""

from __future__ import annotations

import ast
import hashlib
import re

REPRODUCED = "Issue reproduced"
RESOLVED = "Issue resolved"
OTHER = "Other issues"
TEST_FILE = "test_issue.py"

# Verdicts of one run of a generated test.
V_REPRODUCED = "reproduced"
V_RESOLVED = "resolved"
V_OTHER = "other"
"""Printed `Other issues`, both lines, neither line, or did not finish."""


def verdict(output: str) -> str:
    """What one run's output says: reproduced, resolved, or other."""
    has_rep, has_res, has_other = REPRODUCED in output, RESOLVED in output, OTHER in output
    if has_rep and not has_res and not has_other:
        return V_REPRODUCED
    if has_res and not has_rep and not has_other:
        return V_RESOLVED
    return V_OTHER


def static_problem(source: str) -> str | None:
    """Why a test cannot be kept without running it, or None."""
    if not source.strip():
        return "empty test"
    missing = [s for s in (REPRODUCED, RESOLVED) if s not in source]
    if missing:
        return f"the source never prints {' nor '.join(repr(s) for s in missing)}"
    try:
        ast.parse(source)
    except SyntaxError as exc:
        return f"syntax error: {exc.msg} at line {exc.lineno}"
    return None


def generated_test_id(source: str) -> str:
    """A short stable id of a test's source (trailing whitespace and blank lines ignored)."""
    lines = [line.rstrip() for line in source.replace("\r\n", "\n").split("\n")]
    text = "\n".join(line for line in lines if line)
    return "t-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


_NEW_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)


def source_from_submission(submission: str | None) -> str | None:
    """The test's source from a test episode's submission: the file's text, or a diff creating it.

    A diff counts only when it adds a file named `test_issue.py`: its added lines are the source.
    """
    if submission is None:
        return None
    if not submission.lstrip().startswith(("diff --git", "--- ")):
        return submission
    for block in re.split(r"(?=^diff --git )", submission, flags=re.MULTILINE):
        header = _NEW_FILE.match(block)
        name = header.group(2) if header else ""
        if not name.endswith(TEST_FILE) and f"+++ b/{TEST_FILE}" not in block:
            continue
        body = block.split("\n@@", 1)
        if len(body) < 2:
            continue
        lines = body[1].split("\n")[1:]  # past the hunk header's own line
        return "\n".join(line[1:] for line in lines if line.startswith("+")) + "\n"
    return None
