"""`forage run`: trajectories on a tasks file through the SWE-bench batch machinery, each one evaluated.

K rollouts of a task are K work items: rollout 0 keeps the task's instance id, rollout k > 0 is
`<instance_id>.patch-<k>` (the run folder's item ids); every item is a copy of the task row, so it
names the same image, test command and tests. The items are written to DIR/tasks.jsonl (a dataset
for `swebench eval`), the agent runs through `swebench/batch.py: run_batch` (progress, resume,
`--rerun-errors`), then every item's prediction is evaluated in a fresh container from its task's
image (`swebench/evaluate.py`, resumable too) into DIR/eval/<item_id>/, and DIR/preds/rollout-<k>.jsonl
holds each rollout's predictions under the tasks' own ids.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

from cwm_agent.agent.config import RunConfig
from cwm_agent.agent.files import write_text_atomic
from cwm_agent.swebench.batch import BatchProgress, run_batch
from cwm_agent.swebench.dataset import Prediction, SWEBenchInstance, load_instances
from cwm_agent.swebench.evaluate import EvalOptions, InstanceResult, evaluate_predictions

ITEMS_FILE = "tasks.jsonl"
SUMMARY_FILE = "forage.json"


def item_id(instance_id: str, rollout: int) -> str:
    return instance_id if rollout == 0 else f"{instance_id}.patch-{rollout}"


def expand(tasks: list[SWEBenchInstance], rollouts: int) -> list[SWEBenchInstance]:
    """Every (task, rollout) as its own instance row, rollout-major (all rollout 0 first)."""
    items = []
    for k in range(rollouts):
        for task in tasks:
            extra = dict(task.model_extra or {})
            extra.setdefault("image", task.image)
            row = {**task.model_dump(), **extra, "instance_id": item_id(task.instance_id, k)}
            row["forage_task"] = task.instance_id
            row["rollout"] = k
            items.append(SWEBenchInstance.model_validate(row))
    return items


def load_items(output_dir: Path) -> list[SWEBenchInstance]:
    path = output_dir / ITEMS_FILE
    return load_instances(path) if path.exists() else []


async def collect(
    tasks: list[SWEBenchInstance],
    config: RunConfig,
    output_dir: Path,
    workers: int,
    rollouts: int = 1,
    rerun_errors: bool = False,
    on_update: Callable[[BatchProgress], None] | None = None,
    run_id: str | None = None,
) -> BatchProgress:
    """Run the agent on every item not finished yet (a re-run resumes)."""
    items = expand(tasks, rollouts)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / ITEMS_FILE, "".join(json.dumps(i.as_dict()) + "\n" for i in items))
    return await run_batch(items, config, output_dir, workers, rerun_errors, on_update=on_update, run_id=run_id)


def evaluate_run(
    output_dir: Path,
    workers: int,
    options: EvalOptions | None = None,
    on_result: Callable[[InstanceResult], None] | None = None,
) -> dict:
    """Evaluate every item's prediction (finished ones are skipped) and write the run's summary."""
    items = load_items(output_dir)
    preds_path = output_dir / "preds.jsonl"
    preds = []
    if preds_path.exists():
        for line in preds_path.read_text(encoding="utf-8").splitlines():
            try:
                preds.append(Prediction.model_validate_json(line))
            except ValueError:
                continue
    _, results = evaluate_predictions(items, preds, output_dir / "eval", workers, options, on_result)
    outcome = {r.instance_id: r.outcome for r in results}
    by_rollout: dict[int, list[dict]] = {}
    for item in items:
        extra = item.model_extra or {}
        pred = next((p for p in preds if p.instance_id == item.instance_id), None)
        if pred is None:
            continue
        by_rollout.setdefault(int(extra.get("rollout", 0)), []).append(
            {"instance_id": extra.get("forage_task", item.instance_id), "model_name_or_path": pred.model_name_or_path,
             "model_patch": pred.model_patch}
        )  # fmt: skip
    if len(by_rollout) > 1:
        for k, rows in by_rollout.items():
            write_text_atomic(output_dir / "preds" / f"rollout-{k}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "items": len(items),
        "evaluated": len(results),
        "outcomes": dict(Counter(outcome.values())),
        "resolved_by_rollout": {
            str(k): sum(outcome.get(item_id(r["instance_id"], k)) == "resolved" for r in rows)
            for k, rows in sorted(by_rollout.items())
        },
    }
    write_text_atomic(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
