"""The figures of a run at a glance, for `swebench stats`, the HTML report and `report --compare`.

Resolved counts come from the evaluation of rollout 0's patches (what `preds.jsonl` held); pass@1
and pass@k from every rollout that was evaluated. Tool usage is read from the trajectories.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable

from cwm_agent.agent.trajectory import Trajectory
from cwm_agent.reports.runfolder import ERROR_STATUSES, Item, RunFolder
from cwm_agent.reports.show import closes_episode


@dataclass
class RepoRow:
    repo: str
    instances: int = 0
    submitted: int = 0
    resolved: int = 0
    errored: int = 0


@dataclass
class ToolRow:
    tool: str
    calls: int = 0
    failed: int = 0


@dataclass
class Summary:
    run: str
    dataset: int
    """Instances of the dataset the run was given."""
    instances: int
    """Instances with at least one work item in the folder."""
    submitted: int
    """Instances whose rollout-0 patch episode was graded (a patch went to preds.jsonl)."""
    evaluated: bool
    resolved: int
    """Instances whose rollout-0 patch the evaluation resolved."""
    unresolved: int
    empty_patch: int
    eval_errors: int
    running: int
    rollouts: int
    evaluated_rollouts: int = 0
    """Rollouts with an evaluation (rollout k > 0: under eval/rollout-<k>/)."""
    pass_at_1: float | None = None
    pass_at_k: float | None = None
    endings: dict[str, dict[str, int]] = field(default_factory=dict)
    """kind -> ending (exit status) -> work items."""
    repos: list[RepoRow] = field(default_factory=list)
    tools: list[ToolRow] = field(default_factory=list)
    format_errors: int | None = None
    """Format-error turns (None: trajectories not read)."""
    turns: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)

    @property
    def resolved_of_dataset(self) -> float:
        return self.resolved / self.dataset if self.dataset else 0.0

    @property
    def resolved_of_submitted(self) -> float:
        return self.resolved / self.submitted if self.submitted else 0.0

    def figures(self) -> dict[str, float | int | None]:
        """The headline numbers, by name (what --compare subtracts)."""
        return {
            "dataset": self.dataset,
            "submitted": self.submitted,
            "resolved": self.resolved,
            "resolved % of dataset": round(100 * self.resolved_of_dataset, 1),
            "resolved % of submitted": round(100 * self.resolved_of_submitted, 1),
            "pass@1 %": None if self.pass_at_1 is None else round(100 * self.pass_at_1, 1),
            f"pass@{self.rollouts} %": None if self.pass_at_k is None else round(100 * self.pass_at_k, 1),
            "errored": sum(n for kind in self.endings.values() for s, n in kind.items() if s in ERROR_STATUSES),
            "mean turns": round(_mean(self.turns), 1),
            "mean generated tokens": round(_mean(self.completion_tokens)),
            "mean seconds": round(_mean(self.elapsed), 1),
            "format errors": self.format_errors,
        }

    def to_json(self) -> dict:
        data = asdict(self)
        data["resolved_of_dataset"] = self.resolved_of_dataset
        data["resolved_of_submitted"] = self.resolved_of_submitted
        return data


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 0.0


def load_trajectory(item: Item) -> Trajectory | None:
    """The item's trajectory, or None when it has none or it cannot be read."""
    if item.trajectory is None:
        return None
    try:
        return Trajectory.load(item.trajectory)
    except (OSError, ValueError):
        return None


def summarize(run: RunFolder, tools: bool = True, trajectories: dict[str, Trajectory | None] | None = None) -> Summary:
    """The run's figures; `tools=False` skips reading trajectories (tool usage stays empty and
    `format_errors` None); `trajectories` (by item id) saves reading them again."""
    patch0 = [i for i in run.items if i.kind == "patch" and i.rollout == 0]
    evaluated = run.eval_dir is not None
    outcomes = Counter(i.evaluation.outcome for i in patch0 if i.evaluation)
    summary = Summary(
        run=run.name,
        dataset=run.dataset_size(),
        instances=len(run.instance_ids()),
        submitted=sum(1 for i in patch0 if i.result and i.result.graded),
        evaluated=evaluated,
        resolved=outcomes["resolved"],
        unresolved=outcomes["unresolved"],
        empty_patch=outcomes["empty_patch"],
        eval_errors=outcomes["error"],
        running=sum(1 for i in run.items if i.result is None),
        rollouts=run.rollouts,
    )
    if run.rollouts > 1:
        per_instance: dict[str, list[bool]] = {}
        for item in run.items:
            if item.kind == "patch" and item.evaluation is not None:
                per_instance.setdefault(item.instance_id, []).append(item.evaluation.resolved)
                summary.evaluated_rollouts = max(summary.evaluated_rollouts, item.rollout + 1)
        # pass@k only from every rollout's evaluation: rollout 0's alone would pass for pass@1.
        if per_instance and summary.evaluated_rollouts == run.rollouts:
            summary.pass_at_1 = sum(sum(v) / len(v) for v in per_instance.values()) / summary.dataset
            summary.pass_at_k = sum(any(v) for v in per_instance.values()) / summary.dataset
    for item in run.items:
        summary.endings.setdefault(item.kind, Counter())[item.status] += 1
        if item.result is not None:
            summary.turns.append(item.result.turns)
            summary.completion_tokens.append(item.result.tokens.completion)
            summary.prompt_tokens.append(item.result.tokens.prompt)
            summary.elapsed.append(round(item.result.elapsed, 2))
    summary.endings = {kind: dict(counts.most_common()) for kind, counts in summary.endings.items()}
    repos: dict[str, RepoRow] = {}
    for item in patch0:
        row = repos.setdefault(item.repo, RepoRow(item.repo))
        row.instances += 1
        row.submitted += bool(item.result and item.result.graded)
        row.resolved += bool(item.resolved)
        row.errored += bool(item.result and item.result.errored)
    summary.repos = sorted(repos.values(), key=lambda r: r.repo)
    if tools:
        if trajectories is None:
            trajectories = {item.item_id: load_trajectory(item) for item in run.items}
        summary.tools, summary.format_errors = tool_usage(t for t in trajectories.values() if t is not None)
    return summary


def tool_usage(trajectories: Iterable[Trajectory]) -> tuple[list[ToolRow], int]:
    """Calls and failures per tool, most used first, and the number of format-error turns (not
    counting a reply that ended an episode after its submission, which CWM grades)."""
    calls: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    format_errors = 0
    for trajectory in trajectories:
        for turn in trajectory.turns:
            if turn.format_error and not closes_episode(turn, trajectory):
                format_errors += 1
            if turn.action is not None:
                calls[turn.action.tool] += 1
                failed[turn.action.tool] += turn.tool_ok is False
    return [ToolRow(tool, n, failed[tool]) for tool, n in calls.most_common()], format_errors
