"""The end-of-run summary: endings and errors grouped by kind with the first full message of each."""

from __future__ import annotations

from cwm_agent.runs.display import clock
from cwm_agent.runs.folder import RunFolder
from cwm_agent.runs.progress import RunProgress
from cwm_agent.runs.work import ERROR_STATUSES


def summary_lines(progress: RunProgress, folder: RunFolder, run_id: str, noun: str = "work items") -> list[str]:
    """Plain lines for the user, after a run (also after a stopped one)."""
    p = progress
    lines = []
    here = f"{p.done_here} in this run, {p.done_before} before" if p.done_before else f"{p.done_here} in this run"
    lines.append(f"run {run_id}: {p.done}/{p.total} {noun} done ({here}) in {clock(p.elapsed)}")
    if p.stopped:
        lines.append(f"STOPPED: {p.stopped}; {p.remaining} not run (run the same command again to resume).")
    if p.endings:
        lines.append("endings: " + ", ".join(f"{status} {n}" for status, n in p.endings.most_common()))
    if p.unfinished_with_submission:
        lines.append(
            f"  unfinished: {p.unfinished_with_submission} ended on a turn, context or time limit after a "
            "submission: not graded, as CWM grades (--grade-unfinished grades them)"
        )
    for status, n in p.endings.most_common():
        message = p.first_message.get(status)
        if message and status in ERROR_STATUSES:
            lines.append(f"  {status} ({n}), first: {message}")
    for status, n in p.endings.most_common():
        message = p.first_message.get(status)
        if message and status not in ERROR_STATUSES:
            lines.append(f"  {status} ({n}), first: {message}")
    t = p.run_tokens
    cached = f", {t.cached:,} cached" if t.cached is not None else ""
    lines.append(
        f"tokens: {t.prompt:,} processed{cached}, {t.completion:,} generated; "
        f"model {p.model_seconds:,.1f} s, tools {p.tool_seconds:,.1f} s"
    )
    lines.append(f"results: {folder.results_path}")
    if folder.log_path.exists() and folder.log_path.stat().st_size:
        text = folder.log_path.read_text(encoding="utf-8", errors="replace")
        errors, warnings = text.count(" ERROR "), text.count(" WARNING ")
        lines.append(f"harness log: {folder.log_path} ({errors} errors with tracebacks, {warnings} warnings)")
    return lines
