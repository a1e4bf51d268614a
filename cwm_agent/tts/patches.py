"""Patch normalisation: rollouts whose patches differ only in whitespace are one candidate.

The key of a patch drops what git writes differently for the same change (`index` lines with blob
hashes, hunk headers whose line numbers shift with blank lines), blank added/removed/context
lines, trailing whitespace and runs of spaces inside a line. Leading indentation is kept: in Python
it is syntax, so two patches indenting a line differently are different programs.
"""

from __future__ import annotations

import hashlib
import re

_SPACES = re.compile(r"[ \t]+")
_DIFF_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.MULTILINE)
_PLUS_FILE = re.compile(r"^\+\+\+ b/(\S+)", re.MULTILINE)


def is_empty(patch: str | None) -> bool:
    """No change at all: None, "", or only whitespace."""
    return not (patch or "").strip()


def _line_key(line: str) -> str | None:
    line = line.rstrip()
    if not line or line.startswith(("index ", "@@")):
        return None
    marker, body = (line[0], line[1:]) if line[0] in "+- " else ("", line)
    if marker and not body.strip():
        return None  # a blank line added, removed or kept: whitespace only
    indent = len(body) - len(body.lstrip(" \t"))
    return marker + body[:indent].expandtabs(4) + _SPACES.sub(" ", body[indent:])


def normalise(patch: str) -> str:
    """The text two whitespace-only-different patches share."""
    keys = (_line_key(line) for line in patch.replace("\r\n", "\n").split("\n"))
    return "\n".join(k for k in keys if k is not None)


def patch_id(patch: str) -> str:
    """A short stable id of a non-empty patch's normalised form."""
    return "p-" + hashlib.sha256(normalise(patch).encode("utf-8")).hexdigest()[:12]


def touched_files(patch: str) -> list[str]:
    """Paths a patch changes (from its `diff --git` lines, else its `+++ b/` lines), in order."""
    found = [m.group(2) for m in _DIFF_FILE.finditer(patch)] or [m.group(1) for m in _PLUS_FILE.finditer(patch)]
    return list(dict.fromkeys(found))
