"""What every command shares: the error boundary, output-directory checks, id lists, config overrides.

Every command is registered through `command()`, which turns any `UserError` raised inside it
into one line `error: MESSAGE` on stderr and the error's exit code; so the commands themselves
raise the project's errors and never print them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

from cwm_agent.cli.console import user_error
from cwm_agent.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(UserError):
    """A flag or argument on the command line is wrong."""


def command(fn: F) -> F:
    """`fn` with its user errors turned into a one-line message and an exit code."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise user_error(str(exc), exc.exit_code) from None

    return run  # type: ignore[return-value]


def split_ids(values: Optional[list[str]]) -> list[str] | None:
    """Id lists from repeated options and comma- or space-separated values; None when none given."""
    if not values:
        return None
    return [part for value in values for part in value.replace(",", " ").split() if part]


def check_output_dir(path: Path, flag: str = "--output") -> None:
    """An output directory may be missing (it is made) or a directory, never a file."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; pass a directory.")


def make_output_dir(path: Path, flag: str = "--output") -> None:
    """`check_output_dir`, then make the directory and check this process can write in it."""
    import tempfile

    check_output_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {flag} {path}: {exc.strerror or exc}; pass a writable directory.") from None


def parse_set_options(pairs: Optional[list[str]]) -> dict[str, Any]:
    """`-c agent.max_turns=10 -c sampling.seed=3` as nested dicts; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"-c {pair!r}: write KEY=VALUE with a dotted key, e.g. -c agent.max_turns=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"-c {pair!r}: {part} is given both a value and sub-keys")
            node = child
        if isinstance(node.get(leaf), dict):
            raise UsageError(f"-c {pair!r}: {key} is given both a value and sub-keys")
        node[leaf] = value
    return nested


SET_HELP = "Override one config key, e.g. -c agent.max_turns=10 (repeatable; see `cwm-agent config`)."

RELEASE_HELP = (
    "A checkout of CWM's release (github.com/facebookresearch/cwm): show the model CWM's exact texts and run its "
    "edit/create plugins (also cwm_release: in the config, or CWM_RELEASE)."
)


def release_override(path: Optional[Path]) -> dict[str, Any]:
    """The config override for `--cwm-release PATH`, after checking that every text and plugin the harness reads
    is in the checkout (a one-line error naming the file and the name otherwise, before anything starts)."""
    if path is None:
        return {}
    from cwm_agent.prompts.release import load_release_texts  # inside: CLI start-up time
    from cwm_agent.tools.release import load_release

    root = path.expanduser().resolve()
    load_release_texts(root)
    load_release(root)
    return {"cwm_release": str(root)}


def run_config(
    config_file: Optional[Path], set_options: Optional[list[str]], cwm_release: Optional[Path], flags: dict[str, Any]
) -> Any:
    """The run's configuration: defaults, then `--config FILE`, then `-c key=value`, then the command's own
    flags (`flags`, nested like the config) and `--cwm-release`, the later winning."""
    from cwm_agent.agent.config import load_config, merge  # inside: CLI start-up time

    overrides = merge(parse_set_options(set_options), {**flags, **release_override(cwm_release)})
    return load_config(config_file, overrides)
