"""The live display as a user sees it: in a pseudo-terminal (wide and narrow) and as plain output in a pipe.

The display runs in a child process whose stderr is a pty (or a pipe); nothing happens in the run while
it is shown, so whatever changes on screen was drawn by the display's own timer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from terminal import open_terminal, read_until_exit

SHOW = r"""
import asyncio, sys
from rich.console import Console
from cwm_agent.agent.record import TokenTotals
from cwm_agent.runs.display import LiveDisplay
from cwm_agent.runs.progress import RunProgress
from cwm_agent.runs.work import ItemRecord

async def main():
    progress = RunProgress(total=40, done_before=10, done=10)
    progress.start_item("django__django-11099")
    progress.start_item("sympy__sympy-20590.patch-3")
    console = Console(stderr=True)
    print(f"terminal={console.is_terminal} width={console.size.width}", file=sys.stderr, flush=True)
    async with LiveDisplay(progress, console, status_every=1.0) as display:
        await asyncio.sleep(1.2)
        record = ItemRecord(instance_id="astropy__astropy-12907", item_id="astropy__astropy-12907",
                            status="submitted", turns=17, tokens=TokenTotals(prompt=48581, completion=3402))
        progress.count(record)
        display.item_done(record)
        await asyncio.sleep(float(sys.argv[1]))

asyncio.run(main())
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    return {**env, "TERM": "xterm-256color"}


def in_pty(columns: int, seconds: float) -> str:
    """Everything the display wrote to a terminal `columns` wide."""
    master, slave = open_terminal(columns, 24)
    proc = subprocess.Popen(
        [sys.executable, "-c", SHOW, str(seconds)], stdin=slave, stdout=slave, stderr=slave, env=_env(),
        close_fds=True,
    )  # fmt: skip
    os.close(slave)
    screen = read_until_exit(master, proc, seconds + 20)
    proc.wait(timeout=10)
    os.close(master)
    assert proc.returncode == 0, screen
    return screen


def in_pipe(seconds: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SHOW, str(seconds)], capture_output=True, text=True, env=_env(), timeout=30
    )


@pytest.fixture(scope="module")
def shown():
    """The three displays run side by side (each waits on its own clock, so together they take as long as one)."""
    with ThreadPoolExecutor(3) as pool:
        wide, narrow, pipe = pool.submit(in_pty, 120, 2.5), pool.submit(in_pty, 60, 2.2), pool.submit(in_pipe, 1.5)
        return {"wide": wide.result(), "narrow": narrow.result(), "pipe": pipe.result()}


def test_in_a_wide_terminal_the_block_is_redrawn_every_second_without_events(shown):
    screen = shown["wide"]
    assert "terminal=True width=120" in screen
    text = ANSI.sub("", screen)
    # The clocks moved with nothing happening in the run: the timer redrew the block.
    for second in ("0:00:01", "0:00:02", "0:00:03"):
        assert f"elapsed {second}" in text, text
    assert "\x1b[" in screen  # drawn in place (cursor movement), not as a stream of lines
    assert "django__django-11099  turn   1" in text and "sympy__sympy-20590.patch-3" in text
    assert "11/40 done  2 running" in text
    assert "endings: submitted 1" in text
    # The ETA counts only this process's pace: 1 item in ~1.2 s, 29 left -> about 35 s, never 0:00:00.
    etas = re.findall(r"ETA (\d+:\d\d:\d\d)", text)
    assert etas and all(eta != "0:00:00" for eta in etas)
    assert "ETA 0:00:3" in text or "ETA 0:00:4" in text
    assert "tokens: 0 processed" in text  # counted from turns as requests return (none here)
    assert all(len(line) <= 120 for line in text.splitlines())
    assert "Traceback" not in text


def test_in_a_narrow_terminal_it_prints_plain_lines(shown):
    screen = shown["narrow"]
    assert "terminal=True width=60" in screen
    text = ANSI.sub("", screen)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    finished = [line for line in lines if line.startswith("[11/40] astropy__astropy-12907 submitted")]
    assert len(finished) == 1 and "turns 17" in finished[0]
    status = [line for line in lines if line.startswith("11/40 done") or line.startswith("10/40 done")]
    assert len(status) >= 2  # one status line per second here (--status-every)
    assert "\x1b[2K" not in screen and "\x1b[1A" not in screen  # no redrawing in place


def test_in_a_pipe_it_prints_plain_lines(shown):
    proc = shown["pipe"]
    assert proc.returncode == 0, proc.stderr
    assert "terminal=False" in proc.stderr and "\x1b[" not in proc.stderr
    assert "[11/40] astropy__astropy-12907 submitted (turns 17" in proc.stderr
    assert re.search(r"11/40 done  2 running  elapsed 0:00:0\d", proc.stderr)
