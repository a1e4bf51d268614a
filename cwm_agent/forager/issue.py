"""The issue text of a mutate-fix task: written from the failing tests' output, never showing the fix."""

from __future__ import annotations

import re

MAX_LISTED = 10
MAX_SHOWN = 2
MAX_LINES = 30
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def fix_lines(patch: str, mutated_source: str) -> set[str]:
    """The original code's lines the fix brings back that the buggy file does not have (stripped)."""
    present = {line.strip() for line in mutated_source.splitlines()}
    out = set()
    for line in patch.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            text = line[1:].strip()
            if text and text not in present:
                out.add(text)
    return out


def _excerpt(text: str) -> str:
    lines = [_ADDRESS.sub("0x...", line.rstrip()) for line in text.strip().splitlines()]
    if len(lines) > MAX_LINES:
        lines = lines[: MAX_LINES // 3] + ["..."] + lines[-(MAX_LINES - MAX_LINES // 3 - 1) :]
    return "\n".join(lines)


def _short(test: str) -> str:
    return test.split("::", 1)[1] if "::" in test else test


def issue_text(fail_to_pass: list[str], failure_text: dict[str, str], patch: str, mutated_source: str) -> str:
    """A bug report: which tests fail and how (the first failures' tracebacks), nothing of the fix.

    Any line that contains a line of the original code (what the patch adds back) is left out."""
    files = sorted({t.split("::", 1)[0] for t in fail_to_pass})
    if len(fail_to_pass) == 1:
        title = f"`{_short(fail_to_pass[0])}` fails"
    else:
        title = f"{len(fail_to_pass)} tests in {', '.join(f'`{f}`' for f in files[:3])} fail"
    listed = [f"- `{t}`" for t in fail_to_pass[:MAX_LISTED]]
    if len(fail_to_pass) > MAX_LISTED:
        listed.append(f"- ... and {len(fail_to_pass) - MAX_LISTED} more")
    parts = [
        title,
        "",
        "After a recent change to the library code, these tests fail (every other test still passes):",
        "",
        *listed,
    ]
    shown = [t for t in fail_to_pass if failure_text.get(t, "").strip()][:MAX_SHOWN]
    for test in shown:
        parts += ["", f"Output of `{test}`:", "", "```", _excerpt(failure_text[test]), "```"]
    parts += [
        "",
        "The tests are right; the library code is wrong. Please fix the code so that these tests pass again "
        "without breaking the others.",
    ]
    hidden = fix_lines(patch, mutated_source)
    kept = [line for line in "\n".join(parts).splitlines() if not any(h in line for h in hidden)]
    return "\n".join(kept) + "\n"
