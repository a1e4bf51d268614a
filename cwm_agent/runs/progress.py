"""What a batch run has done so far: the model behind the live display and the end-of-run summary."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from cwm_agent.agent.record import TokenTotals
from cwm_agent.runs.work import ItemRecord

UNFINISHED_STATUSES = frozenset({"turn_limit", "context_limit", "time_limit"})
"""Episodes CWM counts as failed even when they submitted something (the limit ended them)."""


@dataclass
class Running:
    item_id: str
    started: float
    turn: int = 0


@dataclass
class RunProgress:
    """Counters of one run process; `done`/`endings` include the items finished by earlier processes."""

    total: int
    done_before: int = 0
    """Items already finished in the folder when this process started."""
    done: int = 0
    running: dict[str, Running] = field(default_factory=dict)
    endings: Counter[str] = field(default_factory=Counter)
    """Finished items by status (an ExitStatus value, `image_error`, `harness_error`)."""
    first_message: dict[str, str] = field(default_factory=dict)
    """The first full detail seen for each status that has one."""
    unfinished_with_submission: int = 0
    """Items ended by a turn/context/time limit after a submission (not graded as CWM grades)."""
    tokens: TokenTotals = field(default_factory=TokenTotals)
    """Tokens of the requests of this process, summed as each returns."""
    run_tokens: TokenTotals = field(default_factory=TokenTotals)
    """Tokens of every finished item (earlier processes included), from the results."""
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    stopped: str | None = None
    """Why the run stopped before its end (the model server went down), None otherwise."""

    @property
    def done_here(self) -> int:
        return self.done - self.done_before

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def eta(self) -> float | None:
        """Seconds left at this process's own pace (items done by earlier processes don't count)."""
        if self.done_here <= 0:
            return None
        return self.elapsed / self.done_here * self.remaining

    @property
    def per_hour(self) -> float | None:
        if self.done_here <= 0 or self.elapsed <= 0:
            return None
        return self.done_here / self.elapsed * 3600

    @property
    def errors(self) -> int:
        from cwm_agent.runs.work import ERROR_STATUSES

        return sum(n for status, n in self.endings.items() if status in ERROR_STATUSES)

    def start_item(self, item_id: str) -> None:
        self.running[item_id] = Running(item_id, time.monotonic())

    def turn(self, item_id: str, turn) -> None:  # noqa: ANN001 - an agent.trajectory.Turn
        """A turn was recorded: its request's tokens are counted now, not when the item ends."""
        running = self.running.get(item_id)
        if running is not None:
            running.turn = turn.index
        tokens = turn.tokens
        self.tokens = self.tokens.add(
            TokenTotals(prompt=tokens.prompt or 0, completion=tokens.completion or 0, cached=tokens.cached)
        )

    def count(self, record: ItemRecord, here: bool = True) -> None:
        """A finished item (of this process when `here`, else read back from the folder)."""
        self.running.pop(record.item_id, None)
        self.done += 1
        if not here:
            self.done_before += 1
        self.endings[record.status] += 1
        if record.detail and record.status not in self.first_message and record.status != "submitted":
            self.first_message[record.status] = record.detail
        if record.status in UNFINISHED_STATUSES and record.submission is not None:
            self.unfinished_with_submission += 1
        self.run_tokens = self.run_tokens.add(record.tokens)
        self.model_seconds += record.model_seconds
        self.tool_seconds += record.tool_seconds

    def finish_uncounted(self, item_id: str) -> None:
        """An item left without a result (cancelled): no longer running."""
        self.running.pop(item_id, None)
