"""`swebench stats`: a run's summary as terminal tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cwm_agent.reports.summary import Summary


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def quantiles(values: list[float]) -> tuple[float, float, float, float]:
    """(min, median, 90th percentile, max) of `values` (nearest rank); zeros when empty."""
    if not values:
        return 0.0, 0.0, 0.0, 0.0
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return ordered[0], rank(0.5), rank(0.9), ordered[-1]


def print_summary(summary: Summary, console: Console) -> None:
    head = Table(title=Text(f"run {summary.run}"), show_header=False, title_justify="left")
    head.add_column()
    head.add_column(justify="right")
    head.add_row("dataset instances", str(summary.dataset))
    head.add_row("submitted (graded patch)", f"{summary.submitted}  ({_pct(summary.submitted, summary.dataset)})")
    if summary.evaluated:
        head.add_row(
            Text("resolved", style="bold green"),
            f"{summary.resolved}  ({_pct(summary.resolved, summary.dataset)} of dataset, "
            f"{_pct(summary.resolved, summary.submitted)} of submitted)",
        )
        head.add_row(
            "unresolved / empty patch / eval error",
            f"{summary.unresolved} / {summary.empty_patch} / {summary.eval_errors}",
        )
    else:
        head.add_row("resolved", "not evaluated (run `cwm-agent swebench eval`)")
    if summary.rollouts > 1 and summary.pass_at_1 is None:
        head.add_row(
            f"pass@1, pass@{summary.rollouts}",
            f"not computed: {summary.evaluated_rollouts} of {summary.rollouts} rollouts evaluated",
        )
    if summary.pass_at_1 is not None:
        head.add_row("pass@1", f"{100 * summary.pass_at_1:.1f}%")
        head.add_row(f"pass@{summary.rollouts}", f"{100 * (summary.pass_at_k or 0):.1f}%")
    if summary.running:
        head.add_row(Text("still running (no result yet)", style="yellow"), str(summary.running))
    if summary.format_errors is not None:
        head.add_row("format errors (turns)", str(summary.format_errors))
    console.print(head)

    endings = Table(title="endings", title_justify="left")
    endings.add_column("kind")
    endings.add_column("ending")
    endings.add_column("items", justify="right")
    for kind, counts in summary.endings.items():
        for status, n in counts.items():
            endings.add_row(Text(kind), Text(status), str(n))
    console.print(endings)

    dist = Table(title="per work item", title_justify="left")
    for name in ("", "min", "median", "p90", "max", "mean"):
        dist.add_column(name, justify="right" if name else "left")
    for name, values, fmt in (
        ("turns", summary.turns, "{:.0f}"),
        ("generated tokens", summary.completion_tokens, "{:.0f}"),
        ("seconds", summary.elapsed, "{:.1f}"),
    ):
        q = quantiles(values)
        mean = sum(values) / len(values) if values else 0.0
        dist.add_row(name, *(fmt.format(v) for v in (*q, mean)))
    console.print(dist)

    if summary.repos:
        repos = Table(title="per repository", title_justify="left")
        for name in ("repository", "instances", "submitted", "resolved", "errored"):
            repos.add_column(name, justify="left" if name == "repository" else "right")
        for row in summary.repos:
            repos.add_row(Text(row.repo), str(row.instances), str(row.submitted), str(row.resolved), str(row.errored))
        console.print(repos)
    if summary.tools:
        tools = Table(title="tool calls", title_justify="left")
        for name in ("tool", "calls", "failed"):
            tools.add_column(name, justify="left" if name == "tool" else "right")
        for row in summary.tools:
            tools.add_row(Text(row.tool), str(row.calls), str(row.failed))
        console.print(tools)
