"""The `edit` tool: replace lines of an existing file, given one SEARCH/REPLACE block.

Body (what the model writes between `<tool: edit>\\n` and `\\n</tool>`)::

    path/to/file.py
    <<<<<<< SEARCH
    exact lines of the file
    =======
    their replacement (may be empty: the lines are deleted)
    >>>>>>> REPLACE

The search lines must equal one or more whole consecutive lines of the file (whitespace
included), at exactly one place. Line endings are the file's own: a CRLF file stays CRLF, and
a file without a final newline keeps it that way. The file's permission bits are kept.

The logic is `parse_edit` and `apply_edit` (text in, text or `EditError` out); `EditTool` is the
thin part that finds, reads and writes the file through the sandbox's file API, so it works in
images whose Python is old or missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from cwm_agent.tools.base import ToolContext, ToolResult, failure, path_from_first_line, probe_path

SEARCH_MARK = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE_MARK = ">>>>>>> REPLACE"

SNIPPET_CONTEXT = 8
"""Lines shown above and below the changed region (CWM's own edit tool showed 8)."""

FORMAT_HINT = (
    "An edit call is the file's path on the first line, then exactly one block:\n"
    f"{SEARCH_MARK}\n[lines to find, copied exactly from the file]\n{DIVIDER}\n"
    f"[lines to put in their place]\n{REPLACE_MARK}"
)


class EditError(Exception):
    """The edit was not made; the message tells the model why and what to do."""


@dataclass
class EditRequest:
    path: str
    splits: list[tuple[list[str], list[str]]]
    """Candidate (search lines, replacement lines) pairs, one per `=======` line in the block.
    Usually one; several only when a search or replacement line is itself `=======` (an RST
    underline, say); `apply_request` picks one."""


def _is(line: str, marker: str) -> bool:
    return line.rstrip() == marker


def parse_edit(body: str) -> EditRequest:
    """Split an edit body into its path and SEARCH/REPLACE block, or raise EditError."""
    path, rest = path_from_first_line(body)
    if not path or path.startswith(("<<<<<<<", "=======", ">>>>>>>")):
        raise EditError(f"The first line of an edit call must be the path of the file to change.\n{FORMAT_HINT}")
    lines = rest.split("\n")
    # Blank lines around the block carry no meaning; forgive them.
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    searches = sum(_is(line, SEARCH_MARK) for line in lines)
    replaces = sum(_is(line, REPLACE_MARK) for line in lines)
    if searches == 0 and replaces == 0:
        raise EditError(f"No SEARCH/REPLACE block found after the path.\n{FORMAT_HINT}")
    if searches > 1 or replaces > 1:
        raise EditError(
            f"Only one SEARCH/REPLACE block is allowed per edit call; found {max(searches, replaces)}. "
            "Make one edit per call."
        )
    if searches != 1 or replaces != 1:
        missing = SEARCH_MARK if searches == 0 else REPLACE_MARK
        raise EditError(f"The block has no `{missing}` line.\n{FORMAT_HINT}")
    if not _is(lines[0], SEARCH_MARK):
        raise EditError(f"Only the path may come before `{SEARCH_MARK}`.\n{FORMAT_HINT}")
    if not _is(lines[-1], REPLACE_MARK):
        raise EditError(f"Nothing may follow `{REPLACE_MARK}`.\n{FORMAT_HINT}")
    inner = lines[1:-1]
    dividers = [i for i, line in enumerate(inner) if _is(line, DIVIDER)]
    if not dividers:
        raise EditError(f"The block has no `{DIVIDER}` line between the search and replacement lines.\n{FORMAT_HINT}")
    splits = [(inner[:i], inner[i + 1 :]) for i in dividers if i > 0]
    if not splits:
        raise EditError(
            "The search part of the block is empty. Copy the exact lines to replace from the file; "
            "to add a new file use create, to add lines search for the lines next to them."
        )
    return EditRequest(path=path, splits=splits)


@dataclass
class EditOutcome:
    data: bytes
    """The new file content."""
    message: str
    """The success message for the model."""
    line: int
    """1-based line where the replacement starts."""
    num_lines: int
    changed: bool


def _split_lines(text: str) -> tuple[list[str], bool]:
    """Lines without their `\\n` (a CRLF line keeps its `\\r`), and whether the text ended with `\\n`."""
    if text == "":
        return [], False
    lines = text.split("\n")
    if lines[-1] == "":
        return lines[:-1], True
    return lines, False


def _bare(line: str) -> str:
    return line[:-1] if line.endswith("\r") else line


def _find(lines: list[str], search: list[str]) -> list[int]:
    """0-based starts of every place where `search` equals consecutive whole lines."""
    n, k = len(lines), len(search)
    first = search[0]
    return [
        i
        for i in range(n - k + 1)
        if _bare(lines[i]) == first and all(_bare(lines[i + j]) == search[j] for j in range(1, k))
    ]


def _shown(line: str) -> str:
    """A line as the model should see it: no `\\r`, undecodable bytes as U+FFFD."""
    return _bare(line).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _numbered(lines: list[str], start: int) -> str:
    """`cat -n` style: the 1-based number right-aligned in 6 columns, a tab, the line."""
    return "\n".join(f"{number:6}\t{_shown(line)}" for number, line in enumerate(lines, start=start))


def _not_found_message(lines: list[str], search: list[str], path: str) -> str:
    message = f"No change was made: the search lines do not appear verbatim in {path}."
    first = search[0]
    exact = [i for i, line in enumerate(lines) if _bare(line) == first]
    if exact:
        # The first line is there; say where the match breaks off, which is usually one small typo.
        best_start, best_len = exact[0], 0
        for i in exact:
            length = 0
            while length < len(search) and i + length < len(lines) and _bare(lines[i + length]) == search[length]:
                length += 1
            if length > best_len:
                best_start, best_len = i, length
        file_line = best_start + best_len
        if file_line >= len(lines):
            return message + (
                f" Search lines 1-{best_len} match lines {best_start + 1}-{file_line} of the file, "
                f"but the file ends there while the search has {len(search)} lines."
            )
        differs = _bare(lines[file_line])
        how = "only in whitespace" if differs.strip() == search[best_len].strip() else "in its text"
        return message + (
            f" Search lines 1-{best_len} match lines {best_start + 1}-{file_line} of the file, but search line "
            f"{best_len + 1} differs from file line {file_line + 1} {how}. The file has there:\n"
            f"{_numbered([lines[file_line]], file_line + 1)}"
        )
    stripped = first.strip()
    if stripped:
        loose = [i + 1 for i, line in enumerate(lines) if _bare(line).strip() == stripped]
        if loose:
            where = ", ".join(map(str, loose[:10]))
            return message + (
                f" The first search line appears at line(s) {where} with different indentation or surrounding "
                "whitespace: the search lines must match the file exactly, indentation included."
            )
    return message + " Look at the file again (e.g. with `sed -n` or `grep -n`) and copy the lines exactly."


def apply_edit(data: bytes, search: list[str], replace: list[str], path: str) -> EditOutcome:
    """Replace the one occurrence of `search` in the file `data`, or raise EditError.

    `path` is only used in messages.
    """
    if b"\0" in data:
        raise EditError(f"{path} looks like a binary file; edit only changes text files.")
    # surrogateescape keeps bytes that are not UTF-8 exactly as they were.
    text = data.decode("utf-8", "surrogateescape")
    lines, trailing_newline = _split_lines(text)
    search = [_bare(line) for line in search]
    starts = _find(lines, search)
    if not starts:
        raise EditError(_not_found_message(lines, search, path))
    if len(starts) > 1:
        where = ", ".join(str(i + 1) for i in starts)
        raise EditError(
            f"No change was made: the search lines appear {len(starts)} times in {path}, starting at lines {where}. "
            "Add surrounding lines to the search so that it matches only one place."
        )
    start = starts[0]
    # The file's line ending, by majority of the lines that have one.
    ended = lines if trailing_newline else lines[:-1]
    crlf = sum(line.endswith("\r") for line in ended) * 2 > len(ended) > 0
    new_block = [_bare(line) + ("\r" if crlf else "") for line in replace]
    new_lines = lines[:start] + new_block + lines[start + len(search) :]
    # A file without a final newline keeps none: when the edit reached the end, the new last
    # line loses the `\r` of its CRLF ending too.
    if not trailing_newline and start + len(search) == len(lines) and new_lines:
        new_lines[-1] = _bare(new_lines[-1])
    new_text = "\n".join(new_lines) + ("\n" if new_lines and trailing_newline else "")
    new_lines = _split_lines(new_text)[0]
    new_data = new_text.encode("utf-8", "surrogateescape")
    changed = new_data != data

    line = start + 1
    first_shown = max(1, line - SNIPPET_CONTEXT)
    last_shown = min(len(new_lines), line + len(new_block) - 1 + SNIPPET_CONTEXT)
    snippet = _numbered(new_lines[first_shown - 1 : last_shown], first_shown)
    count = f"{len(new_lines)} line{'' if len(new_lines) == 1 else 's'}"
    if not changed:
        head = f"The replacement lines are the same as the search lines; {path} is unchanged ({count})."
    else:
        what = "updated" if new_block else "updated (lines deleted)"
        head = f"The file {path} was {what} at line {line} and now has {count}."
    message = (
        f"{head} The lines around the edit:\n{snippet}\n"
        "Review the change and make sure it is what you intended; fix it with another edit if not."
    )
    return EditOutcome(data=new_data, message=message, line=line, num_lines=len(new_lines), changed=changed)


def apply_request(data: bytes, request: EditRequest) -> EditOutcome:
    """Apply the request, choosing among candidate splits (see `EditRequest.splits`).

    The longest search that matches wins: search lines are copied from the file, so a longer
    unique match is the likelier reading. When none applies, the error for the first
    `=======` is raised, the reading a person would make.
    """
    errors: list[EditError] = []
    for search, replace in sorted(request.splits, key=lambda split: -len(split[0])):
        try:
            return apply_edit(data, search, replace, request.path)
        except EditError as error:
            errors.append(error)
    raise errors[-1]


class EditTool:
    name = "edit"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        try:
            request = parse_edit(body)
        except EditError as error:
            return failure(str(error))
        info = probe_path(ctx, request.path)
        if info.is_dir:
            return failure(f"{request.path} is a directory; edit changes a file. Give the path of a file.")
        if not info.exists:
            return failure(
                f"The file {request.path} does not exist (resolved to {info.path}). "
                "Check the path; to make a new file use create."
            )
        target = info.real_path or info.path
        try:
            data = ctx.sandbox.read_file(target)
            outcome = apply_request(data, request)
        except EditError as error:
            return failure(str(error))
        except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
            return failure(f"Could not read {request.path}: {error}")
        if outcome.changed:
            ctx.sandbox.write_file(target, outcome.data, mode=info.mode if info.mode is not None else 0o644)
        return ToolResult(output=outcome.message, ok=True)
