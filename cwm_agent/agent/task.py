"""A task: what one episode works on. Every use (solve, SWE-bench, rollouts) makes these."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Task(BaseModel):
    """One problem to solve in one sandbox."""

    task_id: str
    """A name for logs and output files (SWE-bench: the instance id)."""
    problem_statement: str
    """The issue text given to the model."""
    kind: Literal["patch", "test"] = "patch"
    """`patch`: fix the issue and submit a diff. `test`: write a reproduction test and submit its path."""
    image: str | None = None
    """Sandbox image; None means the run config's sandbox image."""
    repo_dir: str = "/testbed"
    """Where the repository is in the sandbox (the SWE-bench convention)."""
    base_commit: str | None = None
    """The commit the patch must apply to; None: the repository's HEAD when the episode starts."""
    repo_source: str | None = None
    """A host checkout or git URL, copied into `repo_dir` before the episode (None: the image has it)."""
    scrub_history: bool = False
    """Remove every commit not reachable from `base_commit` before the model sees the repository."""
    startup_commands: list[str] = Field(default_factory=list)
    """Session commands run before the first turn (e.g. activating the image's environment)."""
