"""CWM's own tool texts and edit/create plugins, read from a checkout of CWM's release at run time.

With `--cwm-release PATH` the model meets CWM's exact environment: the bash and submit messages are
the release's own strings, and edit and create run the release's plugin scripts in the sandbox, the
way CWM's backend runs them. Nothing of the release is imported or shipped with the project: its
source files are parsed with `ast` (so another version of the release that renamed something is a
clear `ReleaseError` naming the file and the name, not a wrong text).
"""

from __future__ import annotations

import ast
import functools
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from cwm_agent.errors import ReleaseError
from cwm_agent.sandbox.base import RunStatus, Sandbox
from cwm_agent.tools.base import ToolContext, ToolResult

SWERL_DIR = Path("cwm/rl/swerl")
TOOLS_FILE = SWERL_DIR / "tools.py"
CONFIGS_FILE = SWERL_DIR / "default_configs.py"
PLUGINS_DIR = SWERL_DIR / "plugins"
PLUGIN_NAMES = ("edit", "create")


@dataclass(frozen=True)
class Field:
    """A `{name}` slot of an f-string read from the release."""

    name: str


@dataclass(frozen=True)
class Template:
    """An f-string of the release as text and named slots; `render` fills the slots."""

    parts: tuple[str | Field, ...]

    def render(self, **values: str) -> str:
        return "".join(part if isinstance(part, str) else values[part.name] for part in self.parts)


@dataclass(frozen=True)
class Release:
    """What the harness uses from one checkout of CWM's release."""

    root: Path
    bash_messages: dict[str, str]
    """The message for a command that ended the session, by `RunStatus` value: `timeout`,
    `output_too_long`, `session_died` (the fresh-session sentence included)."""
    submit_messages: dict[str, Template]
    """Refusals of submit, with a `{path}` slot: `unreadable`, `empty`, `not_diff` (patch kind),
    `file_unreadable` (file kind)."""
    plugin_command: Template
    """How a plugin is run through the session, with `{script_path}`, `{EOF}` and `{command}` slots."""
    eof: str
    """The heredoc delimiter of `plugin_command`."""
    plugin_dir: str
    """Where the plugin scripts live in the sandbox (CWM: /swerl-plugins)."""
    plugins_dir: Path
    """The release's plugin folder (with `edit.py` and `create.py`), copied whole into the sandbox as
    CWM's backend copies it."""

    def plugin_script(self, name: str) -> str:
        return f"{self.plugin_dir.rstrip('/')}/{name}.py"

    def command_for(self, name: str, body: str) -> str:
        """The shell command CWM's backend runs for a call of plugin `name` with `body`."""
        return self.plugin_command.render(script_path=self.plugin_script(name), EOF=self.eof, command=body)


def _missing(root: Path, rel: Path, what: str) -> ReleaseError:
    return ReleaseError(
        f"{root / rel}: no {what} found; is {root} a checkout of CWM's release (github.com/facebookresearch/cwm)? "
        "Another version may name it differently."
    )


def _parse(root: Path, rel: Path) -> ast.Module:
    path = root / rel
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except FileNotFoundError:
        raise ReleaseError(
            f"{path} does not exist: is {root} a checkout of CWM's release (github.com/facebookresearch/cwm)? "
            "Give the directory that holds its `cwm/` folder."
        ) from None
    except (OSError, SyntaxError, UnicodeDecodeError) as error:
        raise ReleaseError(f"{path} could not be read as Python: {error}") from None


def _function(module: ast.Module, name: str, root: Path, rel: Path) -> ast.FunctionDef:
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise _missing(root, rel, f"function `{name}`")


def _constant(module: ast.Module, name: str, root: Path, rel: Path) -> str:
    for node in module.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise _missing(root, rel, f"string constant `{name}`")


def _template(node: ast.expr) -> Template | None:
    """A string or f-string whose slots are plain names, as a Template; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return Template((node.value,))
    if not isinstance(node, ast.JoinedStr):
        return None
    parts: list[str | Field] = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            parts.append(value.value)
        elif (
            isinstance(value, ast.FormattedValue)
            and isinstance(value.value, ast.Name)
            and value.conversion == -1
            and value.format_spec is None
        ):
            parts.append(Field(value.value.id))
        else:
            return None
    return Template(tuple(parts))


def _assigned(body: list[ast.stmt], target: str) -> list[Template]:
    """Templates assigned to `target` directly in `body` (not in nested blocks)."""
    found = []
    for stmt in body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target for t in stmt.targets):
            template = _template(stmt.value)
            if template is not None:
                found.append(template)
    return found


def _branches(function: ast.FunctionDef) -> list[tuple[str, list[ast.stmt]]]:
    """Every `if`/`elif` of the function: its test as source text and its body."""
    return [(ast.unparse(node.test), node.body) for node in ast.walk(function) if isinstance(node, ast.If)]


def _bash_messages(module: ast.Module, root: Path) -> dict[str, str]:
    name = "bash_feedback_default"
    function = _function(module, name, root, TOOLS_FILE)
    by_error_type: dict[str, str] = {}
    for test, body in _branches(function):
        if "error_type" not in test:
            continue
        texts = _assigned(body, "feedback")
        if len(texts) == 1 and all(isinstance(p, str) for p in texts[0].parts):
            for key in ("exit", "timeout", "too_long"):
                if f"'{key}'" in test or f'"{key}"' in test:
                    by_error_type.setdefault(key, texts[0].render())
    suffixes = [
        stmt.value.value
        for stmt in ast.walk(function)
        if isinstance(stmt, ast.AugAssign)
        and isinstance(stmt.target, ast.Name)
        and stmt.target.id == "feedback"
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    ]
    missing = [key for key in ("exit", "timeout", "too_long") if key not in by_error_type]
    if missing or len(suffixes) != 1:
        what = f"message for error type {missing[0]!r}" if missing else "fresh-session sentence"
        raise _missing(root, TOOLS_FILE, f"{what} in `{name}`")
    return {
        "timeout": by_error_type["timeout"] + suffixes[0],
        "output_too_long": by_error_type["too_long"] + suffixes[0],
        "session_died": by_error_type["exit"] + suffixes[0],
    }


def _submit_messages(module: ast.Module, root: Path) -> dict[str, Template]:
    messages: dict[str, Template] = {}
    checks = {
        "submit_diff_file": (("exit_code", "unreadable"), (".strip()", "empty"), ("startswith", "not_diff")),
        "submit_file": (("exit_code", "file_unreadable"),),
    }
    for name, wanted in checks.items():
        function = _function(module, name, root, TOOLS_FILE)
        for test, body in _branches(function):
            for clue, key in wanted:
                texts = _assigned(body, "error")
                if clue in test and len(texts) == 1 and key not in messages:
                    messages[key] = texts[0]
        for clue, key in wanted:
            if key not in messages:
                raise _missing(root, TOOLS_FILE, f"refusal message of `{name}` for the check on `{clue}`")
            slots = {p.name for p in messages[key].parts if isinstance(p, Field)}
            if slots - {"path"}:
                raise _missing(root, TOOLS_FILE, f"refusal message of `{name}` with only a {{path}} slot")
    return messages


def _plugin_command(module: ast.Module, root: Path) -> Template:
    name = "make_python_plugin"
    function = _function(module, name, root, TOOLS_FILE)
    for template in _assigned(function.body, "command"):
        slots = {p.name for p in template.parts if isinstance(p, Field)}
        if slots == {"script_path", "EOF", "command"}:
            return template
    raise _missing(root, TOOLS_FILE, f"plugin command (an f-string of script_path, EOF and command) in `{name}`")


@functools.lru_cache(maxsize=8)
def _load(root: Path) -> Release:
    if not root.is_dir():
        raise ReleaseError(f"{root} is not a directory: give the path of a checkout of CWM's release.")
    tools = _parse(root, TOOLS_FILE)
    configs = _parse(root, CONFIGS_FILE)
    for name in PLUGIN_NAMES:
        path = root / PLUGINS_DIR / f"{name}.py"
        if not path.is_file():
            raise ReleaseError(
                f"{path} does not exist: the checkout {root} lacks CWM's `{name}` plugin "
                "(is it a checkout of github.com/facebookresearch/cwm?)."
            )
    return Release(
        root=root,
        bash_messages=_bash_messages(tools, root),
        submit_messages=_submit_messages(tools, root),
        plugin_command=_plugin_command(tools, root),
        eof=_constant(tools, "EOF", root, TOOLS_FILE),
        plugin_dir=_constant(configs, "PLUGIN_BIND_TARGET", root, CONFIGS_FILE),
        plugins_dir=root / PLUGINS_DIR,
    )


def load_release(root: Path | str) -> Release:
    """Read what the harness uses from the checkout at `root` (once per path), or ReleaseError."""
    return _load(Path(root).expanduser().resolve())


_installed: weakref.WeakKeyDictionary[object, Path] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install_plugins(sandbox: Sandbox, release: Release) -> None:
    """Copy the release's plugin scripts into the sandbox (where CWM's backend puts them), once per
    sandbox. Call it when the sandbox has started, so the files are there from the first turn."""
    with _install_lock:
        if _installed.get(sandbox) == release.root:
            return
        sandbox.copy_in(release.plugins_dir, release.plugin_dir)
        _installed[sandbox] = release.root


def run_release_plugin(ctx: ToolContext, name: str, body: str) -> ToolResult:
    """Run the release's plugin `name` on a call's body through the session, as CWM's backend does:
    the output is the session's output whatever happened (a timeout's partial output included), and
    the call succeeded when the command ended normally with exit code 0."""
    assert ctx.cwm_release is not None
    release = load_release(ctx.cwm_release)
    install_plugins(ctx.sandbox, release)
    result = ctx.sandbox.run(release.command_for(name, body), timeout=ctx.command_timeout)
    return ToolResult(
        output=result.output,
        ok=result.status is RunStatus.OK and result.exit_code == 0,
        timed_out=result.status is RunStatus.TIMEOUT,
        restarted=result.restarted,
    )
