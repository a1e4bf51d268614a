"""The `create` tool: write a new file, as CWM's create plugin does. Body: the path, then the content.

The body is read as the plugin reads its stdin (`as_plugin_input`, less the final newline the
heredoc adds): the first line is the path (taken as written), everything after the first newline
is the content, written exactly as given (no final newline added; a body that is only a path
makes an empty file). The path must not exist (a dangling symlink does not) and must not be
empty; the parent directory of the path made absolute must exist. The success message gives the
path and the number of lines (newlines + 1). Every message ends with a newline, as the plugin
prints it. The file is written through the sandbox's file API (mode 0644).
"""

from __future__ import annotations

import posixpath

from cwm_agent.tools.base import ToolContext, ToolResult, as_plugin_input, failure, probe_path
from cwm_agent.tools.edit import said
from cwm_agent.tools.release import run_release_plugin


def parse_create(body: str) -> tuple[str, str]:
    """The path and the content, as CWM's plugin splits the body."""
    text = as_plugin_input(body).removesuffix("\n")
    path, _, content = text.partition("\n")
    return path, content


def created_message(path: str, content: str) -> str:
    return f"Created {path} ({content.count(chr(10)) + 1} lines)."


class CreateTool:
    name = "create"

    def __call__(self, body: str, ctx: ToolContext) -> ToolResult:
        if ctx.cwm_release:
            return run_release_plugin(ctx, self.name, body)
        path, content = parse_create(body)
        info = probe_path(ctx, path) if path else None
        if info is not None and info.exists:
            return failure(said(f"{path} exists already; create only makes new files."))
        if info is None:
            return failure(said("The path is empty. Put the path of the new file on the first line."))
        parent = posixpath.dirname(info.path)
        if not info.parent_exists:
            return failure(said(f"Nothing was created: the directory {parent} does not exist."))
        if not info.parent_is_dir:
            return failure(said(f"Nothing was created: {parent} is not a directory."))
        if info.real_path is None:
            # e.g. `missing/../name`: the kernel walks through `missing`, so CWM's plugin fails here too.
            return failure(said(f"Nothing was created: {path} could not be resolved to a place to write."))
        ctx.sandbox.write_file(info.real_path, content.encode("utf-8"), mode=0o644)
        return ToolResult(output=said(created_message(path, content)), ok=True)
