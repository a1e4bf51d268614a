"""`cwm-agent report`: a run (or two, compared) as static HTML that works offline.

Layout of the output folder:
- `index.html`: the summary (figures, plots, endings, repositories, tools) and the instance table;
- `items/<item_id>.html`: one page per work item (turns, tool calls, observations, patch, tests);
- `assets/`: the stylesheet and the small script (sorting, filtering, searching) the pages share.
A comparison writes `index.html` (the differences) and the two runs' reports under `a/` and `b/`.

Everything shown from a run goes through Jinja's autoescaping (trajectories hold any text a
model or a repository produced); the only markup built in Python is the SVG of the plots and
Pygments' highlighting, both of which escape the text they are given.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import BashLexer, DiffLexer, PythonLexer, TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from cwm_agent import __version__
from cwm_agent.agent.trajectory import Trajectory, Turn
from cwm_agent.reports.plots import histogram
from cwm_agent.reports.runfolder import Item, RunFolder
from cwm_agent.reports.show import closes_episode, final_text, one_line_call, shown_observation
from cwm_agent.reports.summary import Summary, load_trajectory, summarize

HERE = Path(__file__).resolve().parent
FOLD_LINES = 40
"""Observations and calls longer than this many lines are folded."""
FOLD_CHARS = 6000

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def page_name(item_id: str) -> str:
    """A file name for an item page: the id with anything unsafe in a path replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", item_id).lstrip(".") + ".html"


_FORMATTER = HtmlFormatter(nowrap=True, classprefix="hl-")
# Made once: building a formatter (its style table) cost more than highlighting a page.
_DIFF, _BASH, _PYTHON, _TEXT = DiffLexer(), BashLexer(), PythonLexer(), TextLexer()


def _code(text: str, lexer) -> Markup:
    """`text` highlighted as HTML (Pygments escapes it)."""
    return Markup(highlight(text, lexer, _FORMATTER))


def diff_html(text: str) -> Markup:
    return _code(text, _DIFF)


def _file_lexer(path: str):
    try:
        return get_lexer_for_filename(path.strip(), stripnl=False)
    except ClassNotFound:
        return TextLexer()


def edit_as_diff(body: str) -> str | None:
    """An edit tool's SEARCH/REPLACE block as a diff of its lines (None when it is not one)."""
    path, _, rest = body.partition("\n")
    match = re.match(r"<<<<<<< SEARCH\n(.*?)\n?=======\n(.*?)\n?>>>>>>> REPLACE\s*$", rest, re.S)
    if not match:
        return None
    old, new = match.group(1), match.group(2)
    lines = [f"--- {path}", f"+++ {path}", "@@ edit @@"]
    lines += ["-" + ln for ln in old.splitlines()] + ["+" + ln for ln in new.splitlines()]
    return "\n".join(lines) + "\n"


def create_as_diff(body: str) -> str:
    path, _, content = body.partition("\n")
    lines = ["--- /dev/null", f"+++ {path}", f"@@ new file, {content.count(chr(10)) + bool(content)} lines @@"]
    return "\n".join(lines + ["+" + ln for ln in content.splitlines()]) + "\n"


@dataclass
class TurnView:
    index: int
    tool: str
    call: str
    seconds: float
    model_seconds: float
    tool_seconds: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    thinking: str | None
    reply: str | None
    """What the model wrote after its thinking, shown for format errors and final replies."""
    format_error: str | None
    closing: bool
    """The reply after the submission that ended the episode (graded)."""
    body: Markup | None
    body_lines: int
    tool_ok: bool | None
    observation_role: str | None
    observation: str | None
    observation_lines: int

    @property
    def fold_observation(self) -> bool:
        return self.observation is not None and (
            self.observation_lines > FOLD_LINES or len(self.observation) > FOLD_CHARS
        )

    @property
    def state(self) -> str:
        if self.format_error:
            return "error"
        if self.tool_ok is False:
            return "failed"
        return "ok"


def turn_view(turn: Turn, closing: bool = False) -> TurnView:
    tool, call = one_line_call(turn, closing)
    body: Markup | None = None
    lines = 0
    if turn.action is not None:
        text = turn.action.body
        lines = text.count("\n") + 1
        as_diff = None
        if turn.action.tool == "edit":
            as_diff = edit_as_diff(text)
        elif turn.action.tool == "create":
            as_diff = create_as_diff(text)
        if as_diff is not None:
            body = diff_html(as_diff)
        elif turn.action.tool == "bash":
            body = _code(text, _BASH)
        elif turn.action.tool == "submit" and text.lstrip().startswith("diff"):
            body = diff_html(text)
        else:
            body = _code(text, _TEXT)
    reply = None
    thinking = turn.thinking
    if closing:
        reply = final_text(turn)
        if not thinking and turn.raw.count("</think>") == 1:
            thinking = turn.raw.split("</think>")[0]
    elif turn.format_error or turn.action is None:
        reply = turn.raw.split("</think>")[-1].strip() if (turn.thinking and "</think>" in turn.raw) else turn.raw
    shown = shown_observation(turn)
    return TurnView(
        index=turn.index,
        tool=tool,
        call=call if len(call) <= 140 else call[:140] + "…",
        seconds=turn.model_seconds + turn.tool_seconds,
        model_seconds=turn.model_seconds,
        tool_seconds=turn.tool_seconds,
        prompt_tokens=turn.tokens.prompt,
        completion_tokens=turn.tokens.completion,
        cached_tokens=turn.tokens.cached,
        thinking=thinking.strip() if thinking else None,
        reply=reply,
        format_error=None if closing else turn.format_error,
        closing=closing,
        body=body,
        body_lines=lines,
        tool_ok=turn.tool_ok,
        observation_role=shown.role if shown else None,
        observation=shown.content if shown else None,
        observation_lines=shown.content.count("\n") + 1 if shown else 0,
    )


@dataclass
class Row:
    """One row of the instance table."""

    item: Item
    page: str
    resolved: str
    """yes | no | n/a (not evaluated)"""
    eval_outcome: str
    tokens: int
    turns: int
    elapsed: float


def _row(item: Item, prefix: str = "items/") -> Row:
    result = item.result
    return Row(
        item=item,
        page=prefix + page_name(item.item_id),
        resolved="n/a" if item.resolved is None else ("yes" if item.resolved else "no"),
        eval_outcome=item.evaluation.outcome
        if item.evaluation
        else ("not evaluated" if item.kind == "patch" else "n/a"),
        tokens=result.tokens.completion if result else 0,
        turns=result.turns if result else 0,
        elapsed=result.elapsed if result else 0.0,
    )


def _copy_assets(out: Path) -> None:
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for name in ("report.css", "report.js"):
        shutil.copyfile(HERE / "assets" / name, assets / name)
    style = HtmlFormatter(classprefix="hl-", style="default").get_style_defs(".hl")
    (assets / "highlight.css").write_text(style + "\n", encoding="utf-8")


def _plots(summary: Summary) -> list[Markup]:
    return [
        histogram(summary.turns, "turns per work item", integer=True),
        histogram(summary.completion_tokens, "generated tokens per work item", integer=True),
        histogram(summary.elapsed, "seconds per work item"),
    ]


def _submission_html(text: str) -> Markup:
    """A patch as a diff; a test-generation episode's submission (a test file) as Python."""
    return diff_html(text) if text.lstrip().startswith("diff") else _code(text, _PYTHON)


def _submission_title(result) -> str:
    if not result.submission:
        return "Working-tree diff (nothing submitted)"
    kind = "patch" if result.submission.lstrip().startswith("diff") else "test"
    return f"Submitted {kind}" if result.graded else f"Submitted {kind} (not graded: the episode did not finish)"


def _redact(value):
    """`value` with every set `api_key` hidden: a report is made to be shared."""
    if isinstance(value, dict):
        return {k: ("(hidden)" if k == "api_key" and v else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _trajectory_page(run: RunFolder, item: Item, trajectory: Trajectory | None, out: Path, back: str) -> None:
    turns = [turn_view(t, closes_episode(t, trajectory)) for t in trajectory.turns] if trajectory else []
    result = trajectory.result if trajectory else None
    patch = None
    if result is not None:
        patch = result.submission or result.final_diff or None
    html = _env.get_template("trajectory.html.j2").render(
        run=run,
        item=item,
        row=_row(item),
        header=trajectory.header if trajectory else None,
        turns=turns,
        result=result,
        patch=_submission_html(patch) if patch else None,
        patch_title=_submission_title(result) if result else "",
        evaluation=item.evaluation,
        back=back,
        version=__version__,
    )
    (out / page_name(item.item_id)).write_text(html, encoding="utf-8")


def write_report(run: RunFolder, out: Path) -> Path:
    """Write the report of `run` into `out`; returns the path of its index.html."""
    out.mkdir(parents=True, exist_ok=True)
    _copy_assets(out)
    items_dir = out / "items"
    items_dir.mkdir(exist_ok=True)
    trajectories = {item.item_id: load_trajectory(item) for item in run.items}
    summary = summarize(run, trajectories=trajectories)
    rows = []
    for item in run.items:
        trajectory = trajectories[item.item_id]
        rows.append(_row(item))
        _trajectory_page(run, item, trajectory, items_dir, "../index.html")
    html = _env.get_template("index.html.j2").render(
        run=run,
        summary=summary,
        manifest_text=json.dumps(_redact(run.manifest), indent=2) if run.manifest else "",
        rows=rows,
        plots=_plots(summary),
        endings=sorted({r.item.status for r in rows}),
        repos=sorted({r.item.repo for r in rows}),
        kinds=run.kinds,
        multi=run.rollouts > 1 or len(run.kinds) > 1,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        version=__version__,
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


@dataclass
class CompareRow:
    instance_id: str
    a: Row | None
    b: Row | None


def write_compare(run_a: RunFolder, run_b: RunFolder, out: Path, rollout: int = 0) -> Path:
    """Write both runs' reports under `out`/a and `out`/b and, in `out`/index.html, what differs: the
    instances whose patch rollout `rollout` (0: pass@1's) one run resolved and the other did not."""
    out.mkdir(parents=True, exist_ok=True)
    _copy_assets(out)
    write_report(run_a, out / "a")
    write_report(run_b, out / "b")
    sum_a, sum_b = summarize(run_a), summarize(run_b)
    fig_a, fig_b = sum_a.figures(), sum_b.figures()
    figures = []
    for name in dict.fromkeys([*fig_a, *fig_b]):
        va, vb = fig_a.get(name), fig_b.get(name)
        delta = None if va is None or vb is None else round(vb - va, 1)
        figures.append((name, va, vb, delta))

    def rows_of(run: RunFolder, prefix: str) -> dict[str, Row]:
        return {
            i.instance_id: _row(i, prefix + "/items/") for i in run.items if i.kind == "patch" and i.rollout == rollout
        }

    rows_a, rows_b = rows_of(run_a, "a"), rows_of(run_b, "b")
    ids = list(dict.fromkeys([*rows_a, *rows_b]))
    every = [CompareRow(i, rows_a.get(i), rows_b.get(i)) for i in ids]

    def resolved(row: Row | None) -> bool:
        return row is not None and row.resolved == "yes"

    only_a = [r for r in every if resolved(r.a) and not resolved(r.b)]
    only_b = [r for r in every if resolved(r.b) and not resolved(r.a)]
    both = [r for r in every if resolved(r.a) and resolved(r.b)]
    html = _env.get_template("compare.html.j2").render(
        run_a=run_a,
        run_b=run_b,
        rollout=rollout,
        figures=figures,
        only_a=only_a,
        only_b=only_b,
        both=both,
        every=every,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        version=__version__,
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
