"""`forage run`: trajectories on a tasks file through the batch machinery, each one evaluated.

The run is a `swebench run` of the tasks file (`swebench/batch.py: SWEBenchRun` on `cwm_agent/runs`):
the run folder format, K rollouts per task, progress, resume, CWM's grading of predictions
(`preds.jsonl` for rollout 0, `preds/rollout-<k>.jsonl` for the others). Then every rollout's
predictions are evaluated with the tasks' own tests in fresh containers from each task's image
(`swebench/evaluate.py`, resumable too): rollout 0 into DIR/eval/ (the folder format's place),
rollout k into DIR/eval-rollout-<k>/. DIR/tasks.jsonl keeps a copy of the tasks (the export reads
each task's repository from it) and DIR/forage.json the outcome counts per rollout.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from cwm_agent.agent.files import write_text_atomic
from cwm_agent.swebench.dataset import SWEBenchInstance, load_instances, load_predictions
from cwm_agent.swebench.evaluate import EvalOptions, InstanceResult, evaluate_predictions

TASKS_COPY = "tasks.jsonl"
SUMMARY_FILE = "forage.json"


def eval_dir(run_dir: Path, rollout: int) -> Path:
    """Where rollout k's predictions are evaluated."""
    return run_dir / "eval" if rollout == 0 else run_dir / f"eval-rollout-{rollout}"


def preds_path(run_dir: Path, rollout: int) -> Path:
    return run_dir / "preds.jsonl" if rollout == 0 else run_dir / "preds" / f"rollout-{rollout}.jsonl"


def keep_tasks(tasks: list[SWEBenchInstance], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(t.as_dict()) + "\n" for t in tasks)
    path = run_dir / TASKS_COPY
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def kept_tasks(run_dir: Path) -> list[SWEBenchInstance]:
    path = run_dir / TASKS_COPY
    return load_instances(path) if path.exists() else []


def evaluate_rollouts(
    tasks: list[SWEBenchInstance],
    run_dir: Path,
    rollouts: int,
    workers: int,
    options: EvalOptions | None = None,
    on_result: Callable[[int, InstanceResult], None] | None = None,
    executor: Any = None,
) -> dict:
    """Evaluate every rollout's predictions (finished ones are skipped); writes and returns DIR/forage.json.
    `executor`: where the evaluations run (`cwm_agent.runs.executor`; None: this host)."""
    summary: dict = {"tasks": len(tasks), "rollouts": rollouts, "by_rollout": {}}
    totals: Counter = Counter()
    for k in range(rollouts):
        path = preds_path(run_dir, k)
        if not path.exists():
            continue
        preds = load_predictions(path)
        report, results = evaluate_predictions(
            tasks,
            preds,
            eval_dir(run_dir, k),
            workers,
            options,
            (lambda r, k=k: on_result(k, r)) if on_result else None,
            executor=executor,
        )
        outcomes = Counter(r.outcome for r in results)
        totals.update(outcomes)
        summary["by_rollout"][str(k)] = {"predictions": str(path), "eval": str(eval_dir(run_dir, k)), **outcomes}
    summary["outcomes"] = dict(totals)
    write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
