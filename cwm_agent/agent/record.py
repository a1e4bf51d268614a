"""The one record of a finished episode, shared by every use of the pipeline.

`run_task` returns it; `solve` prints it; batch runs write it (with their own ids) to
`results.jsonl`; reports and exports read it back. Nothing else copies its fields.
"""

from __future__ import annotations

import enum

from pydantic import AliasChoices, BaseModel, Field


class ExitStatus(str, enum.Enum):
    """Why an episode ended."""

    SUBMITTED = "submitted"
    """The model's patch (or test) was accepted and a later reply ended the episode: the only ending CWM
    grades."""
    TURN_LIMIT = "turn_limit"
    """The reply that reached the turn limit (its tool is not run). Failed, not graded."""
    CONTEXT_LIMIT = "context_limit"
    """The context outgrew the window. Failed, not graded."""
    TIME_LIMIT = "time_limit"
    """The sandbox outlived its lifetime. Failed, not graded."""
    FORMAT_ERRORS = "format_errors"
    """A malformed reply where the rules end the episode (the test-generation episode, strict mode)."""
    MODEL_ERROR = "model_error"
    """The model server failed and retries did not cure it."""
    SANDBOX_ERROR = "sandbox_error"
    INTERRUPTED = "interrupted"
    """Ctrl-C, SIGTERM or SIGHUP."""


GRADED_STATUSES = frozenset({ExitStatus.SUBMITTED})
"""Endings CWM grades: only an episode that ended after a successful submission."""


class TokenTotals(BaseModel):
    """Tokens an episode cost."""

    prompt: int = 0
    """Prompt tokens processed over all requests (what the server computed or served from cache)."""
    completion: int = 0
    """Tokens generated over all replies."""
    cached: int | None = None
    """Prompt tokens served from the prefix cache, summed; None when the server never said."""
    context: int = 0
    """Size of the dialogue at the end, in CWM's count (the context the model last saw plus its reply)."""

    def add(self, other: TokenTotals) -> TokenTotals:
        cached = None if self.cached is None and other.cached is None else (self.cached or 0) + (other.cached or 0)
        return TokenTotals(
            prompt=self.prompt + other.prompt,
            completion=self.completion + other.completion,
            cached=cached,
            context=max(self.context, other.context),
        )


class EpisodeRecord(BaseModel):
    """What one episode produced."""

    task_id: str = ""
    status: ExitStatus = Field(validation_alias=AliasChoices("status", "exit_status"))
    detail: str = ""
    """A human-readable reason (the limit hit, the server's error, ...)."""
    graded: bool = False
    """Whether CWM would grade this episode: it ended after a successful submission. Episodes that hit
    the turn, context or time limit count as failed even when they submitted something."""
    submission: str | None = None
    """The last accepted submission (a patch, or a test file's content); kept whether or not graded."""
    final_diff: str = ""
    """The harness's own `git diff` of the working tree against the base commit, new files included."""
    base_commit: str = ""
    turns: int = 0
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    elapsed: float = 0.0
    trajectory: str = ""
    """Path of the trajectory file."""

    @property
    def graded_patch(self) -> str:
        """What an evaluation of this episode grades: the submission when graded, else nothing."""
        return (self.submission or "") if self.graded else ""
