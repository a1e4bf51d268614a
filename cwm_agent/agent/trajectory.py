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

import json
import os
from pathlib import Path
from typing import IO, Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

from cwm_agent.agent.record import EpisodeRecord, ExitStatus
from cwm_agent.prompts.render import Message, render_continuation, render_prompt

SCHEMA_VERSION = 2

__all__ = ["ExitStatus", "EpisodeRecord"]


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
    """The first user message as the model saw it (cut to the issue cap when it was longer)."""
    prompt_ids: list[int] | None = None
    """The first prompt's token ids, in token-id mode."""
    texts: str = "cwm-agent"
    """Whose texts the model was shown: "cwm-agent", or the path of CWM's release."""


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
    tokens: TokenCounts = Field(default_factory=TokenCounts)
    reply_ids: list[int] | None = None
    """The reply's token ids as sampled (its end token included), when the server returned them."""
    observation_ids: list[int] | None = None
    """The ids appended after the reply (an end token it lacked, the answer, the generation prompt), in
    token-id mode: the context after this turn is the previous one + reply_ids + observation_ids."""
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    tool_ok: bool | None = None


class Result(EpisodeRecord):
    """The last line: the episode's record (see `cwm_agent.agent.record.EpisodeRecord`)."""

    type: Literal["result"] = "result"


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
