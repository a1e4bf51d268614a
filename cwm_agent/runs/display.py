"""The live view of a batch run: redrawn every second in a terminal, plain lines elsewhere.

In a terminal at least `MIN_WIDTH` columns wide, a rich Live block is redrawn by a timer task every
`interval` seconds (not only when something happens, so the clocks move): done/total, throughput and
ETA, endings so far by kind, tokens, and the running items with their turn and time. Anywhere else (a
log file, a pipe, a narrow terminal) it prints one line per finished item and a status line every
`status_every` seconds. Nothing else may write to the terminal while it runs: unexpected errors go to
the run's harness log, and `note()` prints a line above the live block.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from cwm_agent.runs.progress import RunProgress
from cwm_agent.runs.work import ERROR_STATUSES, ItemRecord

MIN_WIDTH = 80


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def status_line(p: RunProgress) -> str:
    """One line: done/total, running, errors, elapsed, throughput and ETA (plain text)."""
    rate = f"{p.per_hour:.1f}/h" if p.per_hour is not None else "--/h"
    errors = f"  {p.errors} errors" if p.errors else ""
    return (
        f"{p.done}/{p.total} done  {len(p.running)} running{errors}  elapsed {clock(p.elapsed)}  "
        f"{rate}  ETA {clock(p.eta)}"
    )


def endings_line(p: RunProgress) -> str:
    if not p.endings:
        return "endings: none yet"
    return "endings: " + ", ".join(f"{status} {n}" for status, n in p.endings.most_common())


def tokens_line(p: RunProgress) -> str:
    cached = f" ({_count(p.tokens.cached)} cached)" if p.tokens.cached is not None else ""
    rate = f" ({p.tokens.completion / p.elapsed:,.0f}/s)" if p.elapsed >= 1 and p.tokens.completion else ""
    return f"tokens: {p.tokens.prompt:,} processed{cached}, {p.tokens.completion:,} generated{rate}"


def item_line(record: ItemRecord, p: RunProgress) -> str:
    """The plain line printed when an item ends."""
    detail = f": {record.detail}" if record.detail and record.status in ERROR_STATUSES else ""
    return (
        f"[{p.done}/{p.total}] {record.item_id} {record.status}{detail} "
        f"(turns {record.turns}, {clock(record.elapsed)}, {record.tokens.completion:,} generated)"
    )


class LiveDisplay:
    """Shows `progress` while a run goes on; use as `async with LiveDisplay(...) as display:`."""

    def __init__(
        self,
        progress: RunProgress,
        console: Console,
        interval: float = 1.0,
        status_every: float = 30.0,
        live: bool | None = None,
    ) -> None:
        self.progress = progress
        self.console = console
        self.interval = interval
        self.status_every = status_every
        width_ok = console.size.width >= MIN_WIDTH
        self.is_live = console.is_terminal and width_ok if live is None else live
        self._live: Live | None = None
        self._ticker: asyncio.Task | None = None
        self._last_status = time.monotonic()

    def render(self) -> Group:
        p = self.progress
        width = self.console.size.width
        lines = [
            Text(status_line(p), style="bold"),
            Text(endings_line(p)),
            Text(tokens_line(p)),
        ]
        room = max(1, self.console.size.height - len(lines) - 2)
        running = sorted(p.running.values(), key=lambda r: r.started)
        now = time.monotonic()
        shown = running if len(running) <= room else running[: room - 1]
        for r in shown:
            suffix = f"  turn {r.turn + 1:>3}  {clock(now - r.started)}"  # the turn under way
            name = (
                r.item_id if len(r.item_id) + len(suffix) + 2 <= width else r.item_id[: width - len(suffix) - 3] + "…"
            )
            lines.append(Text(f"  {name}{suffix}", style="dim"))
        if len(shown) < len(running):
            lines.append(Text(f"  … and {len(running) - len(shown)} more running", style="dim"))
        for line in lines:
            line.truncate(width, overflow="ellipsis")
            line.no_wrap = True
        return Group(*lines)

    async def __aenter__(self) -> LiveDisplay:
        if self.is_live:
            self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        self.stop()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
        elif time.monotonic() - self._last_status >= self.status_every:
            self._last_status = time.monotonic()
            self._plain(f"{status_line(self.progress)}  {tokens_line(self.progress)}")

    def item_done(self, record: ItemRecord) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
        else:
            self._plain(item_line(record, self.progress))

    def note(self, message: str) -> None:
        """A line for the user (printed above the live block)."""
        self._plain(message)

    def _plain(self, text: str) -> None:
        self.console.print(escape(text), highlight=False, soft_wrap=True)
