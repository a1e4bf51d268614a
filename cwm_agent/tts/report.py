"""The test-time-scaling report: pass@1, pass@k, each strategy's accuracy and gap, cost per stage.

Every rollout's predictions (`preds.jsonl`, `preds/rollout-<k>.jsonl`) are evaluated like `swebench
eval` does (same code, a fresh container per prediction, into `rollout_eval_dir`; instances already
evaluated there are read back). From those official outcomes:

- pass@1 of an instance: the mean over its rollouts of resolved; in total, the mean over instances;
- pass@k: resolved by any rollout;
- a strategy's accuracy: whether the rollout whose exact patch it submitted is resolved (an empty
  choice is unresolved); its gap is pass@k minus its accuracy.

Cost per stage: tokens (prompt processed, completion generated) and container-seconds. For the
rollouts the container-seconds are the episodes' wall time (an episode's sandbox lives that long);
for validation and execution, the containers' lives (`tts/containers.jsonl`); for evaluation, the
evaluations' total time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwm_agent.swebench.dataset import SWEBenchInstance, load_predictions
from cwm_agent.swebench.evaluate import EvalOptions, InstanceResult, evaluate_predictions
from cwm_agent.swebench.grading import RESOLVED
from cwm_agent.tts.candidates import read_results, rollout_pred_files
from cwm_agent.tts.select import Selection


def evaluate_rollouts(
    run_dir: Path, instances: list[SWEBenchInstance], workers: int, run_id: str | None = None
) -> dict[int, dict[str, InstanceResult]]:
    """rollout -> instance -> its official outcome (evaluated now, or read back)."""
    options = EvalOptions(run_id=run_id) if run_id else EvalOptions()
    outcomes: dict[int, dict[str, InstanceResult]] = {}
    for k, path in rollout_pred_files(run_dir).items():
        preds = load_predictions(path)
        _, results = evaluate_predictions(instances, preds, rollout_eval_dir(run_dir, k), workers, options)
        outcomes[k] = {r.instance_id: r for r in results}
    return outcomes


def rollout_eval_dir(run_dir: Path, rollout: int) -> Path:
    """Where rollout k's evaluation goes: `RUN/eval/` for rollout 0 (the run folder's evaluation of
    `preds.jsonl`); for the others `RUN/eval/rollout-<k>/` when a `swebench eval` was run there, else
    `RUN/tts/eval/rollout-<k>/`. Instances already evaluated there are read back, not run again."""
    if rollout == 0:
        return run_dir / "eval"
    theirs = run_dir / "eval" / f"rollout-{rollout}"
    return theirs if theirs.is_dir() else run_dir / "tts" / "eval" / f"rollout-{rollout}"


@dataclass
class Report:
    per_instance: dict[str, dict[str, Any]] = field(default_factory=dict)
    total: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "per_instance": self.per_instance, "stages": self.stages}


def _stage_costs(run_dir: Path, outcomes: dict[int, dict[str, InstanceResult]], ids: set[str]) -> dict[str, dict]:
    stages: dict[str, dict[str, Any]] = {}
    for kind in ("patch", "test"):
        rows = [r for r in read_results(run_dir) if r.get("kind", "patch") == kind and r.get("instance_id") in ids]
        tokens = [r.get("tokens") or {} for r in rows]
        stages[f"{kind}_rollouts"] = {
            "episodes": len(rows),
            "prompt_tokens": sum(int(t.get("prompt") or 0) for t in tokens),
            "completion_tokens": sum(int(t.get("completion") or 0) for t in tokens),
            "container_seconds": round(sum(float(r.get("elapsed") or 0) for r in rows), 1),
        }
    lives = run_dir / "tts" / "containers.jsonl"
    rows = []
    if lives.exists():
        for line in lives.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    for stage in ("validation", "execution"):
        mine = [r for r in rows if r.get("stage") == stage and r.get("instance_id") in ids]
        stages[stage] = {
            "containers": len(mine),
            "runs": sum(int(r.get("runs") or 0) for r in mine),
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "container_seconds": round(sum(float(r.get("seconds") or 0) for r in mine), 1),
        }
    evals = [r for per in outcomes.values() for r in per.values() if r.instance_id in ids]
    stages["evaluation"] = {
        "evaluations": len(evals),
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "container_seconds": round(sum(r.total_s for r in evals), 1),
    }
    return stages


def make_report(
    run_dir: Path,
    instance_ids: list[str],
    outcomes: dict[int, dict[str, InstanceResult]],
    selections: dict[str, Selection],
) -> Report:
    report = Report()
    sums: dict[str, float] = {"pass@1": 0.0, "pass@k": 0.0, **{name: 0.0 for name in selections}}
    for iid in instance_ids:
        resolved = {k: per[iid].outcome == RESOLVED for k, per in outcomes.items() if iid in per}
        n = len(resolved)
        entry: dict[str, Any] = {
            "rollouts": n,
            "resolved_rollouts": [k for k, ok in resolved.items() if ok],
            "pass@1": sum(resolved.values()) / n if n else 0.0,
            "pass@k": any(resolved.values()),
            "strategies": {},
        }
        for name, sel in selections.items():
            k = sel.chosen_rollout.get(iid)
            ok = k is not None and resolved.get(k, False)
            entry["strategies"][name] = {"resolved": ok, "rollout": k}
            sums[name] += ok
        sums["pass@1"] += entry["pass@1"]
        sums["pass@k"] += entry["pass@k"]
        report.per_instance[iid] = entry
    count = len(instance_ids) or 1
    pass_k = sums["pass@k"] / count
    report.total = {
        "instances": len(instance_ids),
        "rollouts": len(outcomes),
        "pass@1": round(sums["pass@1"] / count, 4),
        "pass@k": round(pass_k, 4),
        "strategies": {
            name: {"accuracy": round(sums[name] / count, 4), "gap_to_pass@k": round(pass_k - sums[name] / count, 4)}
            for name in selections
        },
    }
    report.stages = _stage_costs(run_dir, outcomes, set(instance_ids))
    return report
