"""`cwm-agent show`: a trajectory as a person reads it, turn by turn, or as a list of turns.

What is shown is found from a trajectory file, a `solve`/`demo` output folder, or a run folder plus
an instance id; the evaluation outcome is shown when the folder holds one. Every cut is marked
where it happens: lines left out of a long text, characters left out of a long line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pydantic import TypeAdapter
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from cwm_agent.agent.trajectory import Header, Record, Result, Trajectory, Turn
from cwm_agent.errors import UserError
from cwm_agent.prompts.render import Message
from cwm_agent.reports.runfolder import (
    Evaluation,
    RunFolderError,
    eval_folder,
    is_run_folder,
    item_id,
    load_evaluation,
    load_run,
    split_item_id,
)

ELIDED = "⟨… {n} more lines: --full shows all⟩"
CUT_LINE = "⟨… +{n} chars⟩"
MARKER_STYLE = "black on yellow"
_records: TypeAdapter[Record] = TypeAdapter(Record)


class ShowError(UserError):
    """What was asked to show cannot be found or read."""


class NotStarted(ShowError):
    """The run folder's dataset has this instance, but its episode has not started yet."""


@dataclass
class ShowOptions:
    max_lines: int | None = 25
    """Lines kept of each long text (head and tail); None: all."""
    max_width: int | None = 400
    """Characters kept of each long line; None: all."""
    thinking: bool = True
    turn: int | None = None
    """Only this turn (no task, no result)."""


@dataclass
class Target:
    """A trajectory to show and the evaluation of its patch, when there is one."""

    trajectory: Path
    evaluation: Evaluation | None = None


def clip(text: str, max_lines: int | None, max_width: int | None = None) -> str:
    """At most `max_lines` lines of `text`: its head and its tail (where errors and the budget block
    are), with a marker saying how many lines were left out; lines over `max_width` characters are
    cut with a marker saying how many characters were left out (None: no limit)."""
    lines = text.splitlines()
    if max_width is not None:
        lines = [
            ln if len(ln) <= max_width else ln[:max_width] + CUT_LINE.format(n=len(ln) - max_width) for ln in lines
        ]
    if max_lines is not None and len(lines) > max_lines:
        tail = max_lines // 3
        head = max_lines - tail
        lines = [*lines[:head], ELIDED.format(n=len(lines) - head - tail), *lines[len(lines) - tail :]]
    return "\n".join(lines)


def _text(text: str, opts: ShowOptions, style: str = "") -> Text:
    """`text` clipped, its cut markers highlighted."""
    out = Text(clip(text, opts.max_lines, opts.max_width), style=style)
    out.highlight_regex(r"⟨… [^⟩]*⟩", MARKER_STYLE)
    return out


def _code(text: str, lexer: str, opts: ShowOptions) -> Syntax:
    return Syntax(clip(text, opts.max_lines, opts.max_width), lexer, word_wrap=True, theme="ansi_dark")


def locate(
    path: Path, instance_id: str | None = None, kind: str = "patch", rollout: int = 0, eval_dir: Path | None = None
) -> Target:
    """The trajectory meant by `path` (a file, a solve/demo folder, a run folder with `instance_id`)."""
    if not path.exists():
        raise ShowError(f"{path}: no such file or folder")
    if path.is_dir() and is_run_folder(path):
        if instance_id is None:
            raise ShowError(f"{path} is a run folder: name an instance too (cwm-agent show {path} INSTANCE_ID)")
        try:
            run = load_run(path, eval_dir)
        except RunFolderError as exc:
            raise ShowError(str(exc)) from None
        item = run.find(instance_id, kind, rollout)
        rows = run.manifest.get("dataset", {}).get("rows", {}) if isinstance(run.manifest.get("dataset"), dict) else {}
        if (item is None or item.trajectory is None) and instance_id in rows:
            raise NotStarted(f"{item_id(instance_id, kind, rollout)} has not started yet in {path}")
        if item is None or item.trajectory is None:
            have = run.instance_ids()
            hint = f" (it has {len(have)}: {', '.join(have[:3])}{', ...' if len(have) > 3 else ''})" if have else ""
            raise ShowError(f"{path} has no trajectory of {item_id(instance_id, kind, rollout)}{hint}")
        return Target(item.trajectory, item.evaluation)
    if instance_id is not None:
        raise ShowError(f"{path} is not a run folder; an instance id goes with a run folder")
    if path.is_dir():
        trajectory = path / "trajectory.jsonl"
        if not trajectory.is_file():
            raise ShowError(f"{path} holds no trajectory.jsonl and is not a run folder; pass a trajectory file")
        return Target(trajectory, _solve_evaluation(path, eval_dir))
    if path.parent.name == "trajectories" and is_run_folder(path.parent.parent):
        instance, kind, rollout = split_item_id(path.stem)
        run_dir = path.parent.parent
        folder = eval_folder(run_dir, eval_dir or run_dir / "eval", instance, rollout)
        return Target(path, load_evaluation(folder) if kind == "patch" and folder else None)
    return Target(path, _solve_evaluation(path.parent, eval_dir) if path.name == "trajectory.jsonl" else None)


def _solve_evaluation(folder: Path, eval_dir: Path | None) -> Evaluation | None:
    """`demo` writes its evaluation to DIR/eval/<instance_id>/: the one folder there with a result."""
    root = eval_dir or folder / "eval"
    if not root.is_dir():
        return None
    found = [load_evaluation(d) for d in sorted(root.iterdir()) if d.is_dir()]
    found = [e for e in found if e is not None]
    return found[0] if len(found) == 1 else None


def _turn_title(turn: Turn) -> str:
    tokens = turn.tokens
    cached = f", {tokens.cached} cached" if tokens.cached is not None else ""
    return (
        f"turn {turn.index} · model {turn.model_seconds:.1f}s · tool {turn.tool_seconds:.1f}s · "
        f"{tokens.prompt} prompt + {tokens.completion} generated tokens{cached}"
    )


def _after_thinking(raw: str) -> str:
    return raw.split("</think>")[-1].strip() if "</think>" in raw else raw.strip()


def shown_observation(turn: Turn) -> Message | None:
    """The harness's answer to `turn` as a reader sees it: None when there was none, or when it only
    repeats the turn's format error (shown once, beside the reply)."""
    shown = turn.observation
    if (
        shown is not None
        and turn.format_error is not None
        and shown.role == "user"
        and shown.content.strip() == turn.format_error.strip()
    ):
        return None
    return shown


def closes_episode(turn: Turn, trajectory: Trajectory) -> bool:
    """Whether `turn` is the reply after an accepted submission that called no tool: under CWM's rules
    it ends the episode and the submission is graded, so it is the final answer, not a mistake."""
    result = trajectory.result
    return (
        result is not None
        and result.graded
        and turn.action is None
        and bool(trajectory.turns)
        and turn is trajectory.turns[-1]
    )


def final_text(turn: Turn) -> str:
    """A final reply without its thinking (a reply that closed its thinking once)."""
    return _after_thinking(turn.raw) if turn.raw.count("</think>") == 1 else turn.raw.strip()


def render_turn(turn: Turn, opts: ShowOptions, closing: bool = False) -> Group:
    parts: list[RenderableType] = [Rule(_turn_title(turn), align="left", style="cyan")]
    thinking = turn.thinking or (turn.raw.split("</think>")[0] if closing and turn.raw.count("</think>") == 1 else None)
    if opts.thinking and thinking:
        parts.append(_text(thinking.strip(), opts, "dim italic"))
    if closing:
        parts.append(
            Panel(
                _text(final_text(turn), opts),
                title="final reply (ends the episode; the submission is graded)",
                title_align="left",
                border_style="green",
            )
        )
    elif turn.format_error:
        # What the model wrote, so the reason of the error can be seen; the error itself once.
        wrote = turn.raw if not turn.thinking else _after_thinking(turn.raw)
        parts.append(
            Panel(
                _text(wrote or "(nothing)", opts),
                title="reply (not a valid call)",
                title_align="left",
                border_style="red",
            )
        )
        parts.append(Text(f"format error: {turn.format_error}", style="bold red"))
    elif turn.action is not None:
        lexer = "bash" if turn.action.tool == "bash" else "text"
        style = "green" if turn.tool_ok else ("red" if turn.tool_ok is False else "yellow")
        parts.append(
            Panel(
                _code(turn.action.body, lexer, opts),
                title=f"<tool: {turn.action.tool}>",
                title_align="left",
                border_style=style,
            )
        )
    else:
        parts.append(Panel(_text(_after_thinking(turn.raw), opts), title="final response", title_align="left"))
    shown = shown_observation(turn)
    if shown is not None:
        parts.append(Panel(_text(shown.content, opts), title=shown.role, title_align="left", border_style="dim"))
    return Group(*parts)


def render_header(header: Header, opts: ShowOptions) -> Group:
    task = header.task
    title = f"{task.get('task_id', '?')} · run {header.run_id} · model {header.versions.get('model') or '?'}"
    return Group(Rule(Text(title)), Panel(_text(header.user_prompt, opts), title="task", title_align="left"))


def render_result(result: Result, opts: ShowOptions) -> Group:
    colour = "green" if result.graded else ("yellow" if result.submission else "red")
    parts: list[RenderableType] = [
        Rule(
            Text.assemble((result.status.value, colour), f" · {result.turns} turns · {result.elapsed:.1f}s"),
            style=colour,
        )
    ]
    if result.detail:
        parts.append(_text(result.detail, opts))
    diff = result.submission or result.final_diff
    if diff:
        if not result.submission:
            title = "working tree diff (nothing submitted)"
        else:
            title = "submission" if result.graded else "submission (not graded: the episode did not finish)"
        lexer = "diff" if diff.lstrip().startswith("diff") else "python"
        parts.append(Panel(_code(diff, lexer, opts), title=title, title_align="left"))
    return Group(*parts)


def render_evaluation(evaluation: Evaluation) -> Group:
    colour = {"resolved": "green", "unresolved": "red", "empty_patch": "yellow"}.get(evaluation.outcome, "red")
    parts: list[RenderableType] = [
        Rule(Text.assemble("evaluation: ", (evaluation.outcome, f"bold {colour}")), style=colour)
    ]
    if evaluation.error:
        parts.append(Text(evaluation.error.strip().splitlines()[0], style="red"))
    tests = evaluation.tests
    if tests is not None:
        for label, ok, failed in (
            ("FAIL_TO_PASS", tests.fail_to_pass_ok, tests.fail_to_pass_failed),
            ("PASS_TO_PASS", tests.pass_to_pass_ok, tests.pass_to_pass_failed),
        ):
            line = Text(f"{label}: {len(ok)} passed, {len(failed)} failed", style="red" if failed else "green")
            parts.append(line)
            parts.extend(Text(f"  failed: {name}", style="red") for name in failed)
    if evaluation.folder is not None:
        parts.append(Text(f"logs: {evaluation.folder}", style="dim"))
    return Group(*parts)


def _load(path: Path) -> Trajectory:
    try:
        return Trajectory.load(path)
    except FileNotFoundError:
        raise ShowError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ShowError(f"{path} is a folder; pass a trajectory file") from None
    except UnicodeDecodeError:
        raise ShowError(f"{path} is not a trajectory (not text)") from None
    except ValueError as exc:
        raise ShowError(str(exc).splitlines()[0]) from None


def show_trajectory(target: Target, console: Console, opts: ShowOptions) -> None:
    """Print the whole trajectory (or `opts.turn` only), its result and its evaluation."""
    trajectory = _load(target.trajectory)
    if opts.turn is not None:
        turns = [t for t in trajectory.turns if t.index == opts.turn]
        if not turns:
            raise ShowError(f"{target.trajectory} has no turn {opts.turn} (it has {len(trajectory.turns)})")
        console.print(render_turn(turns[0], opts, closes_episode(turns[0], trajectory)))
        return
    console.print(render_header(trajectory.header, opts))
    for turn in trajectory.turns:
        console.print(render_turn(turn, opts, closes_episode(turn, trajectory)))
    if trajectory.result is None:
        console.print(Rule("no result record: the run was killed or is still going (--follow waits)", style="yellow"))
    else:
        console.print(render_result(trajectory.result, opts))
    if target.evaluation is not None:
        console.print(render_evaluation(target.evaluation))


def one_line_call(turn: Turn, closing: bool = False) -> tuple[str, str]:
    """(tool, its call on one line) of a turn; format errors and final replies named as such."""
    if closing:
        return "final reply", final_text(turn).replace("\n", " ⏎ ")
    if turn.format_error:
        return "format error", turn.format_error.splitlines()[0] if turn.format_error else ""
    if turn.action is None:
        return "final", _after_thinking(turn.raw).replace("\n", " ⏎ ")
    return turn.action.tool, turn.action.body.strip().replace("\n", " ⏎ ")


def show_list(target: Target, console: Console) -> None:
    """One row per turn: turn, tool, the call on one line (cut with `…`), seconds, tokens."""
    trajectory = _load(target.trajectory)
    title = Text(f"{trajectory.header.task.get('task_id', '?')} · {target.trajectory}")
    table = Table(title=title, title_justify="left")
    table.add_column("turn", justify="right", no_wrap=True, min_width=4)
    table.add_column("tool", no_wrap=True, min_width=12)
    table.add_column("call", no_wrap=True)
    for name in ("model s", "tool s", "prompt", "gen"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    # The call is cut here, with a visible `…`, so the other columns keep their width.
    room = max(20, console.width - 66)
    for turn in trajectory.turns:
        closing = closes_episode(turn, trajectory)
        tool, call = one_line_call(turn, closing)
        call = call if len(call) <= room else call[: room - 1] + "…"
        style = "red" if (turn.format_error and not closing) or turn.tool_ok is False else ""
        table.add_row(
            str(turn.index),
            Text(tool, style=style),
            Text(call),
            f"{turn.model_seconds:.1f}",
            f"{turn.tool_seconds:.1f}",
            str(turn.tokens.prompt),
            str(turn.tokens.completion),
        )
    console.print(table)
    result = trajectory.result
    if result is None:
        console.print("no result record: the run was killed or is still going")
    else:
        console.print(
            Text.assemble(
                (result.status.value, "green" if result.graded else ("yellow" if result.submission else "red")),
                f" · {result.turns} turns · {result.elapsed:.1f}s · {result.tokens.completion} generated tokens",
            )
        )
    if target.evaluation is not None:
        console.print(render_evaluation(target.evaluation))


def wait_for_start(
    path: Path, instance_id: str, kind: str, rollout: int, eval_dir: Path | None, poll: float = 0.5
) -> Target:
    """The target once the episode has started (its trajectory exists)."""
    while True:
        try:
            return locate(path, instance_id, kind, rollout, eval_dir)
        except NotStarted:
            time.sleep(poll)


def _appended_records(path: Path, poll: float, on_wait: Callable[[], None] | None) -> Iterator[Record | None]:
    """The file's records as they are appended (whole lines only, so a record being written is read once
    it is complete); None when the file was written again from its start."""
    offset, pending = 0, b""
    waited = False
    while True:
        try:
            with path.open("rb") as fh:
                if os.fstat(fh.fileno()).st_size < offset:
                    offset, pending = 0, b""
                    yield None
                fh.seek(offset)
                chunk = fh.read()
                offset = fh.tell()
        except FileNotFoundError:
            chunk = b""  # replaced right now; read it at the next poll
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                record = _records.validate_python(json.loads(line))
            except ValueError:
                raise ShowError(f"{path}: a line is not a trajectory record; is this a cwm-agent trajectory?") from None
            yield record
        if not lines and not waited and on_wait is not None:
            on_wait()
            waited = True
        time.sleep(poll)


def follow(
    target: Target, console: Console, opts: ShowOptions, poll: float = 0.25, on_wait: Callable[[], None] | None = None
) -> Result:
    """Print the trajectory's records as they are appended, until its result record; returns it."""
    path = target.trajectory
    if not path.is_file():
        raise ShowError(f"{path}: no such file")
    # A reply that ended the episode without a call is the final reply when the result is graded and a
    # mistake otherwise: it waits for the result record (it is always the last turn) to be shown as one.
    held: Turn | None = None
    try:
        for record in _appended_records(path, poll, on_wait):
            if record is None:  # a resumed run restarts an unfinished episode
                console.print(Rule("the trajectory was started again", style="yellow"))
                held = None
            elif isinstance(record, Header):
                console.print(render_header(record, opts))
            elif isinstance(record, Turn):
                if held is not None:
                    console.print(render_turn(held, opts))
                held = record if record.action is None and record.observation is None else None
                if held is None:
                    console.print(render_turn(record, opts))
            else:
                if held is not None:
                    console.print(render_turn(held, opts, closing=record.graded))
                console.print(render_result(record, opts))
                return record
    except KeyboardInterrupt:
        if held is not None:  # stopped before the result: the reply as it stands
            console.print(render_turn(held, opts))
        raise
    raise ShowError(f"{path}: ended without a result record")
