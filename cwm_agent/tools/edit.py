"""The `edit` tool: replace one occurrence of some text in an existing file, as CWM's edit plugin does.

Body (what the model writes between `<tool: edit>\\n` and `\\n</tool>`)::

    path/to/file.py
    <<<<<<< SEARCH
    text to find
    =======
    its replacement (may be empty)
    >>>>>>> REPLACE

CWM's rules, which the model was trained on:
- The body is read as the plugin reads its stdin (`as_plugin_input`): newlines normalized, a final
  newline added. The block is found by one pattern: the path is the line right before the
  `<<<<<<< SEARCH` line (anything above it is ignored), the search text runs to the first
  `\\n=======\\n`, the replacement to the first `\\n>>>>>>> REPLACE` (anything after is ignored). No
  block, or more than one, is an error.
- The file is read as text with its line endings normalized to `\\n` (a CRLF file comes back LF).
- The search text must occur starting at the beginning of a line; it may end mid-line (`def f(`
  matches `def f(a):`). Occurrences may overlap. None: an error, with a hint about indentation when
  the first search line, without its leading whitespace, is somewhere in the file. Several: an
  error naming the lines where they start (`x = 1` is ambiguous next to `x = 10`).
- One: it is replaced, the file written (even when nothing changed), and the model is told the
  line it starts at, the new number of lines (newlines + 1), and the lines around it, numbered.

Every message ends with a newline, as the plugin prints it. The logic is `parse_edit` and
`apply_edit` (text in, text or `EditError` out); `EditTool` reads and writes through the sandbox's
file API, so it works in images whose Python is old or missing. Where CWM's plugin crashes with a
traceback (a directory, a file that is not UTF-8), the model gets a one-line reason instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cwm_agent.tools.base import ToolContext, ToolResult, as_plugin_input, failure, probe_path
from cwm_agent.tools.release import run_release_plugin

BLOCK = re.compile(
    r"(?P<path>.*)\n<<<<<<< SEARCH\n(?P<search>[\s\S]*?)\n=======\n(?P<replace>[\s\S]*?)\n>>>>>>> REPLACE"
)
"""One SEARCH/REPLACE block and the line before it (CWM's grammar; `.` stops at a newline)."""

SNIPPET_CONTEXT = 8
"""Lines shown above and below the replacement (CWM: 8)."""

FORMAT_HINT = (
    "The edit call could not be read. Write it in this form:\n\n"
    "<tool: edit>\n[path]\n<<<<<<< SEARCH\n[search_lines]\n=======\n[replacement_lines]\n>>>>>>> REPLACE\n</tool>"
)


class EditError(Exception):
    """The edit was not made; the message tells the model why."""


@dataclass
class EditRequest:
    path: str
    search: str
    replace: str


@dataclass
class EditOutcome:
    content: str
    """The new file content."""
    message: str
    """The success message for the model (without the final newline)."""
    line: int
    """1-based line where the replacement starts."""
    num_lines: int


def parse_edit(body: str) -> EditRequest:
    """The path and the block of an edit body, or EditError."""
    blocks = [m.groupdict() for m in BLOCK.finditer(as_plugin_input(body))]
    if not blocks:
        raise EditError(FORMAT_HINT)
    if len(blocks) > 1:
        raise EditError(f"An edit call takes exactly one SEARCH/REPLACE block; this one has {len(blocks)}.")
    return EditRequest(**blocks[0])


def occurrences(text: str, sub: str) -> list[int]:
    """Every index where `sub` starts in `text`, overlapping ones included."""
    found = []
    index = text.find(sub)
    while index != -1:
        found.append(index)
        index = text.find(sub, index + 1)
    return found


def numbered(lines: list[str], start: int) -> str:
    """`cat -n` style: the 1-based number right-aligned in 6 columns, a tab, the line."""
    return "\n".join(f"{number:6}\t{line}" for number, line in enumerate(lines, start=start))


def apply_edit(content: str, search: str, replace: str, path: str) -> EditOutcome:
    """Replace the one line-start occurrence of `search` in `content` (newlines already `\\n`), or
    raise EditError. `path` is only used in messages."""
    # A newline in front of both: an occurrence must start at the beginning of a line.
    text, needle = "\n" + content, "\n" + search
    starts = occurrences(text, needle)
    if not starts:
        message = f"Nothing was replaced: the search text does not occur verbatim in {path}."
        if search.partition("\n")[0].lstrip() in text:
            message += " It must match whole consecutive lines of the file exactly, indentation included."
        raise EditError(message)
    if len(starts) > 1:
        lines = ", ".join(str(text.count("\n", 0, i) + 1) for i in starts)
        raise EditError(
            f"Nothing was replaced: the search text occurs more than once in {path}, starting at lines {lines}. "
            "Make it unique."
        )
    start = starts[0]
    new_content = text[:start] + "\n" + replace + text[start + len(needle) :]
    new_content = new_content[1:]
    line = text.count("\n", 0, start) + 1
    num_lines = new_content.count("\n") + 1
    first = max(1, line - SNIPPET_CONTEXT)
    last = line + SNIPPET_CONTEXT + replace.count("\n")
    snippet = numbered(new_content.split("\n")[first - 1 : last], first)
    message = (
        f"Edited {path}: the change starts at line {line}, and the file has {num_lines} lines now. "
        f"The lines around the change:\n{snippet}\n"
        "Check that the change is what you meant."
    )
    return EditOutcome(content=new_content, message=message, line=line, num_lines=num_lines)


def said(message: str) -> str:
    """A message as the plugin prints it (with a final newline)."""
    return message + "\n"


class EditTool:
    name = "edit"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        if ctx.cwm_release:
            return run_release_plugin(ctx, self.name, body)
        try:
            request = parse_edit(body)
        except EditError as error:
            return failure(said(str(error)))
        path = request.path
        info = probe_path(ctx, path)
        if not info.exists:
            return failure(said(f"{path} does not exist. Give the path of an existing file."))
        if info.is_dir:
            return failure(said(f"{path} is a directory. Give the path of a file."))
        target = info.real_path or info.path
        try:
            data = ctx.sandbox.read_file(target)
        except OSError as error:
            return failure(said(f"{path} could not be read ({error.strerror or error})."))
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as error:
            return failure(said(f"{path} is not UTF-8 text (byte {error.start}); edit changes text files only."))
        content = content.replace("\r\n", "\n").replace("\r", "\n")
        try:
            outcome = apply_edit(content, request.search, request.replace, path)
        except EditError as error:
            return failure(said(str(error)))
        ctx.sandbox.write_file(
            target, outcome.content.encode("utf-8"), mode=info.mode if info.mode is not None else 0o644
        )
        return ToolResult(output=said(outcome.message), ok=True)
