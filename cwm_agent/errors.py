"""The one base of every error a user can act on.

Each part of the project raises its own subclass (`SandboxError`, `ModelError`, `ConfigError`,
`DatasetError`, ...) with a message that names what was wrong and what to do. The command line
turns any `UserError` into one line `error: MESSAGE` and exit code `exit_code`, in one place
(`cwm_agent.cli.common.user_errors`); nothing else prints errors.

This module imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is for the person running the command (one line, actionable)."""

    exit_code: int = 2
    """Exit status of a command that ends on this error."""


class ReleaseError(UserError):
    """A checkout given as CWM's release (`--cwm-release`) lacks a file or a name the harness reads.

    Here because two parts read the release: `prompts.release` (texts) and `tools.release` (tool
    messages and plugins)."""
