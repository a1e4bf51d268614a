"""The trajectory of one episode, written as JSON Lines while it runs.

Schema (one JSON object per line, `type` says which record):

1. `header` (first line): schema version, run id, versions, the task, the run config, the
   rendered system prompt and the first user message (the task prompt).
2. `turn` (one per model reply): the raw reply text exactly as the server returned it, the
   thinking, the parsed action (or the format error), the message the harness answered with
   (role + content: a `tool: NAME` observation or a `user` format error), token counts
   (prompt, completion, cached) and model/tool seconds.
3. `result` (last line, absent when the process was killed): exit status, submission, the
   harness's own diff of the working tree, totals.

Each line is flushed when written, so a crash or kill leaves every finished turn readable.
`rebuild_prompt` gives back, from the file alone, the exact text CWM saw for the next reply.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import IO, Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

from cwm_agent.prompts.render import Message, render_continuation, render_prompt

SCHEMA_VERSION = 1


class ExitStatus(str, enum.Enum):
    """Why an episode ended."""

    SUBMITTED = "submitted"
    """The model submitted, then gave its final response."""
    TURN_LIMIT = "turn_limit"
    CONTEXT_LIMIT = "context_limit"
    TIME_LIMIT = "time_limit"
    FORMAT_ERRORS = "format_errors"
    """Too many consecutive format errors (or one, in strict mode)."""
    MODEL_ERROR = "model_error"
    """The model server failed and retries did not cure it."""
    SANDBOX_ERROR = "sandbox_error"
    INTERRUPTED = "interrupted"
    """Ctrl-C / SIGTERM."""


class Action(BaseModel):
    tool: str
    body: str


class TokenCounts(BaseModel):
    prompt: int = 0
    completion: int = 0
    cached: int | None = None


class Header(BaseModel):
    type: Literal["header"] = "header"
    schema_version: int = SCHEMA_VERSION
    run_id: str
    started_at: float
    versions: dict[str, str]
    task: dict
    config: dict
    reasoning: bool
    system_prompt: str
    user_prompt: str


class Turn(BaseModel):
    type: Literal["turn"] = "turn"
    index: int
    """1-based number of the model reply."""
    raw: str
    """The reply exactly as generated (the prompt's `<think>\\n` prefix not included)."""
    finish_reason: str | None = None
    thinking: str | None = None
    action: Action | None = None
    format_error: str | None = None
    """`Kind: message` when the reply could not be parsed."""
    observation: Message | None = None
    """What the harness answered with; None when the episode ended at this reply."""
    unsent_observation: Message | None = None
    """The answer that would have followed when it did not fit in the context (never sent)."""
    tokens: TokenCounts = Field(default_factory=TokenCounts)
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    tool_ok: bool | None = None


class Result(BaseModel):
    type: Literal["result"] = "result"
    exit_status: ExitStatus
    detail: str = ""
    """A human-readable reason (e.g. the model server's error)."""
    submission: str | None = None
    """The last accepted submission (a patch, or a test file's content)."""
    final_diff: str = ""
    """`git diff` of the working tree against the base commit, new files included."""
    base_commit: str = ""
    turns: int = 0
    context_tokens: int = 0
    """Tokens of the whole dialogue at the end (the last prompt plus its reply)."""
    completion_tokens: int = 0
    """Tokens the model generated over all turns."""
    elapsed: float = 0.0


Record = Annotated[Union[Header, Turn, Result], Field(discriminator="type")]
_record_adapter: TypeAdapter[Record] = TypeAdapter(Record)


class TrajectoryWriter:
    """Appends records to a JSONL file, flushing (and fsyncing) each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def write(self, record: Header | Turn | Result) -> None:
        self._file.write(record.model_dump_json() + "\n")
        # Flushed, each line is safe from a crash or kill of this process; only the last record
        # is also fsynced (against a machine crash): an fsync per turn would stall the event loop.
        self._file.flush()
        if isinstance(record, Result):
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class Trajectory(BaseModel):
    """A trajectory read back from its file (possibly partial: no result)."""

    header: Header
    turns: list[Turn]
    result: Result | None

    @classmethod
    def load(cls, path: Path) -> Trajectory:
        header: Header | None = None
        turns: list[Turn] = []
        result: Result | None = None
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = _record_adapter.validate_python(json.loads(line))
                except (json.JSONDecodeError, ValueError) as exc:
                    # A line cut by a kill mid-write is the only tolerated damage: the last one.
                    if fh.read().strip():
                        raise ValueError(f"{path}:{number}: not a trajectory record: {exc}") from None
                    break
                if isinstance(record, Header):
                    header = record
                elif isinstance(record, Turn):
                    turns.append(record)
                else:
                    result = record
        if header is None:
            raise ValueError(f"{path}: no header record; is this a cwm-agent trajectory?")
        return cls(header=header, turns=turns, result=result)

    def messages(self) -> list[Message]:
        """The dialogue as messages (assistant bodies include the `<think>\\n` generation prefix)."""
        prefix = "<think>\n" if self.header.reasoning else ""
        out = [
            Message(role="system", content=self.header.system_prompt),
            Message(role="user", content=self.header.user_prompt),
        ]
        for turn in self.turns:
            out.append(Message(role="assistant", content=prefix + turn.raw))
            if turn.observation is not None:
                out.append(turn.observation)
        return out


def initial_prompt(system_prompt: str, user_prompt: str, reasoning: bool) -> str:
    return render_prompt(
        [Message(role="system", content=system_prompt), Message(role="user", content=user_prompt)], reasoning=reasoning
    )


def rebuild_prompt(trajectory: Trajectory) -> str:
    """The exact prompt text of the request that followed the last turn with an observation.

    Only for `/v1/completions` runs (the default): with `model.api: chat` the server's template
    rendered the prompt, and `Trajectory.messages()` is the record of what was sent.
    """
    header = trajectory.header
    if header.config.get("model", {}).get("api") == "chat":
        raise ValueError(
            "this trajectory was run with model.api: chat; its prompts were rendered by the server "
            "(use Trajectory.messages() for the dialogue)"
        )
    prompt = initial_prompt(header.system_prompt, header.user_prompt, header.reasoning)
    for turn in trajectory.turns:
        if turn.observation is None:
            break
        prompt += render_continuation(turn.raw, [turn.observation], reasoning=header.reasoning)
    return prompt
