"""The `create` tool: write a new file. Body: the path on the first line, the content after it.

The content is everything after the first newline of the body. Since the model's call ends
with `\\n</tool>` and that newline is not part of the body, a file whose content does not end
with a newline gets one: files are written the way editors and `git diff` expect. A body with
only a path creates an empty file (e.g. an `__init__.py`).

The path must not exist and its parent directory must. The file is written through the
sandbox's file API (mode 0644).
"""

from __future__ import annotations

import posixpath

from cwm_agent.tools.base import ToolContext, ToolResult, failure, path_from_first_line, probe_path


def parse_create(body: str) -> tuple[str, str]:
    """The path and the content to write (ending with a newline unless empty)."""
    path, content = path_from_first_line(body)
    if content and not content.endswith("\n"):
        content += "\n"
    return path, content


def count_lines(content: str) -> int:
    return content.count("\n")


def created_message(path: str, content: str) -> str:
    n = count_lines(content)
    return f"The file {path} was created ({n} line{'' if n == 1 else 's'})."


class CreateTool:
    name = "create"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        path, content = parse_create(body)
        if not path:
            return failure("The first line of a create call must be the path of the new file, followed by its content.")
        if path.endswith("/"):
            return failure(
                f"{path} ends with `/`; create makes files. Name the file (make directories with `mkdir -p`)."
            )
        info = probe_path(ctx, path)
        if info.exists:
            kind = "a directory" if info.is_dir else "a file"
            hint = "" if info.is_dir else " To change it, use edit (or remove it first with bash)."
            return failure(f"{path} already exists ({kind} at {info.path}); create only makes new files.{hint}")
        if not info.parent_is_dir:
            parent = posixpath.dirname(info.path)
            return failure(
                f"Cannot create {path}: its parent directory {parent} does not exist. "
                f"Create the directory first (e.g. `mkdir -p {parent}`)."
            )
        ctx.sandbox.write_file(info.real_path or info.path, content.encode("utf-8", "surrogateescape"), mode=0o644)
        return ToolResult(output=created_message(path, content), ok=True)
