"""`cwm-agent show`: a trajectory file as a person reads it, turn by turn."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.text import Text

from cwm_agent.agent.trajectory import Trajectory, Turn

ELIDED = "[... {n} more lines: --full shows all]"


def clip(text: str, max_lines: int | None) -> str:
    """At most `max_lines` lines of `text`: its head and its tail (where errors and the budget
    block are), saying how many were left out between them (None: all)."""
    lines = text.splitlines()
    if max_lines is None or len(lines) <= max_lines:
        return text
    tail = max_lines // 3
    head = max_lines - tail
    return "\n".join([*lines[:head], ELIDED.format(n=len(lines) - head - tail), *lines[len(lines) - tail :]])


def _turn(turn: Turn, max_lines: int | None, thinking: bool) -> Group:
    tokens = turn.tokens
    cached = f", {tokens.cached} cached" if tokens.cached is not None else ""
    title = (
        f"turn {turn.index} · model {turn.model_seconds:.1f}s · tool {turn.tool_seconds:.1f}s · "
        f"{tokens.prompt} prompt + {tokens.completion} generated tokens{cached}"
    )
    parts: list = [Rule(title, align="left", style="cyan")]
    if thinking and turn.thinking:
        parts.append(Text(clip(turn.thinking.strip(), max_lines), style="dim italic"))
    if turn.format_error:
        parts.append(Text(turn.format_error, style="bold red"))
    if turn.action is not None:
        lexer = "bash" if turn.action.tool == "bash" else "text"
        body = Syntax(clip(turn.action.body, max_lines), lexer, word_wrap=True, theme="ansi_dark")
        style = "green" if turn.tool_ok else ("red" if turn.tool_ok is False else "yellow")
        parts.append(Panel(body, title=f"<tool: {turn.action.tool}>", title_align="left", border_style=style))
    elif not turn.format_error:
        parts.append(
            Panel(
                Text(clip(turn.raw.split("</think>")[-1].strip(), max_lines)),
                title="final response",
                title_align="left",
            )
        )
    shown = turn.observation or turn.unsent_observation
    if shown is not None:
        note = "" if turn.observation else " (not sent: the context was full)"
        parts.append(
            Panel(
                Text(clip(shown.content, max_lines)),
                title=f"{shown.role}{note}",
                title_align="left",
                border_style="dim",
            )
        )
    return Group(*parts)


def show_trajectory(
    path: Path, console: Console, max_lines: int | None = 25, thinking: bool = True, turn: int | None = None
) -> None:
    """Print the trajectory at `path`; `turn` prints only that turn."""
    trajectory = Trajectory.load(path)
    header = trajectory.header
    if turn is None:
        task = header.task
        console.print(
            Rule(f"{task.get('task_id', '?')} · run {header.run_id} · model {header.versions.get('model') or '?'}")
        )
        console.print(Panel(Text(clip(header.user_prompt, max_lines)), title="task", title_align="left"))
    for record in trajectory.turns:
        if turn is None or record.index == turn:
            console.print(_turn(record, max_lines, thinking))
    if turn is not None:
        if not any(t.index == turn for t in trajectory.turns):
            raise ValueError(f"{path} has no turn {turn} (it has {len(trajectory.turns)})")
        return
    result = trajectory.result
    if result is None:
        console.print(Rule("no result record: the run was killed or is still going", style="yellow"))
        return
    colour = "green" if result.submission else "red"
    console.print(
        Rule(
            f"[{colour}]{result.exit_status.value}[/{colour}] · {result.turns} turns · {result.elapsed:.1f}s",
            style=colour,
        )
    )
    if result.detail:
        console.print(Text(result.detail))
    diff = result.submission or result.final_diff
    if diff:
        title = "submission" if result.submission else "working tree diff (nothing submitted)"
        console.print(Panel(Syntax(clip(diff, max_lines), "diff", theme="ansi_dark"), title=title, title_align="left"))
