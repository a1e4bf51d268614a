"""`swebench select`: one patch per instance from a run's rollouts, by a strategy, and why.

Writes PREDS.jsonl (the official predictions format, for `swebench eval`) and PREDS.why.jsonl: per
instance the chosen patch's id and rollouts, the strategy's reason and per-candidate scores, and
what execution found (regression tests, generated tests kept, dropped with the reason, the top
tests by agreement). The dataset is the run's (`run.json`) unless one is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cwm_agent.agent.files import write_text_atomic
from cwm_agent.swebench.dataset import Prediction, SWEBenchInstance, load_instances
from cwm_agent.tts.candidates import InstanceCandidates, RunFolderError, load_candidates, read_manifest
from cwm_agent.tts.execute import ExecOptions, ExecStats, Execution, Executor
from cwm_agent.tts.strategies import Strategy


@dataclass
class Selection:
    strategy: str
    predictions: list[Prediction] = field(default_factory=list)
    why: list[dict] = field(default_factory=list)
    chosen_rollout: dict[str, int | None] = field(default_factory=dict)
    """instance -> the rollout whose exact patch text was submitted (None: empty)."""


def run_dataset(run_dir: Path, dataset: str | None, instance_ids: list[str]) -> dict[str, SWEBenchInstance]:
    """The run's instances, from `dataset` or the source named in run.json."""
    info = read_manifest(run_dir).get("dataset") or {}
    source = dataset or info.get("source")
    if not source:
        raise RunFolderError(f"{run_dir}/run.json names no dataset; pass --dataset FILE.")
    split = (info.get("split") if not dataset else None) or "test"
    wanted = set(instance_ids)
    rows = [i for i in load_instances(source, split=split) if i.instance_id in wanted]
    missing = wanted - {i.instance_id for i in rows}
    if missing:
        raise RunFolderError(f"--dataset {source}: lacks the run's instances {', '.join(sorted(missing))}.")
    return {i.instance_id: i for i in rows}


def model_name(run_dir: Path, strategy: str) -> str:
    model = (read_manifest(run_dir).get("model") or {}).get("id") or "cwm-agent"
    return f"{model}+tts-{strategy}"


def _why(inst: InstanceCandidates, ex: Execution | None, strategy: str, choice, chosen) -> dict:
    record = {
        "instance_id": inst.instance_id,
        "strategy": strategy,
        "patch_id": choice.patch_id,
        "rollout": chosen.rollout if chosen else None,
        "rollouts": chosen.rollouts if chosen else [],
        "reason": choice.reason,
        "candidates": len(inst.candidates),
        "patch_rollouts": len(inst.patches),
        "empty_rollouts": sum(p.patch_id is None for p in inst.patches),
        "scores": choice.scores,
    }
    if ex is not None:
        record["execution"] = {
            "error": ex.error,
            "regression": {"how": ex.regression_how, "files": ex.regression_files, "tests": len(ex.regression_tests)},
            "generated": {
                "written": len(inst.tests),
                "test_rollouts": inst.test_rollouts,
                "kept": ex.kept,
                "dropped": [
                    {"test_id": v.test_id, "rollouts": v.rollouts, "reason": v.reason}
                    for v in ex.validation
                    if not v.kept
                ],
                "agreement": ex.agreement,
                "top": ex.top,
            },
            "not_applied": sorted(pid for pid, r in ex.results.items() if not r.applied),
        }
    return record


def select(
    run_dir: Path,
    strategies: list[Strategy],
    dataset: str | None = None,
    instance_ids: list[str] | None = None,
    options: ExecOptions | None = None,
    on_event: Callable[[str], None] | None = None,
) -> tuple[dict[str, Selection], ExecStats]:
    """Each strategy's choice for every instance of the run; executes (through the cache) when one needs it."""
    candidates = load_candidates(run_dir, instance_ids)
    executions: dict[str, Execution] = {}
    executor = Executor(run_dir, options or ExecOptions(), on_event=on_event)
    needs = any(s.needs_execution for s in strategies) or any(
        getattr(s, "needs_problem_statement", False) for s in strategies
    )
    if needs:
        instances = run_dataset(run_dir, dataset, [c.instance_id for c in candidates])
        for inst in candidates:
            inst.problem_statement = instances[inst.instance_id].problem_statement
        if any(s.needs_execution for s in strategies):
            executions = executor.execute(instances, candidates)
    selections: dict[str, Selection] = {}
    for strategy in strategies:
        sel = selections[strategy.name] = Selection(strategy.name)
        name = model_name(run_dir, strategy.name)
        for inst in candidates:
            ex = executions.get(inst.instance_id) if strategy.needs_execution else None
            choice = strategy(inst, ex)
            chosen = next((c for c in inst.candidates if c.patch_id == choice.patch_id), None)
            if choice.patch_id is not None and chosen is None:
                raise RunFolderError(
                    f"strategy {strategy.name} chose {choice.patch_id}, not a candidate of {inst.instance_id}"
                )
            sel.predictions.append(
                Prediction(
                    instance_id=inst.instance_id, model_name_or_path=name, model_patch=chosen.patch if chosen else ""
                )
            )
            sel.chosen_rollout[inst.instance_id] = chosen.rollout if chosen else None
            sel.why.append(_why(inst, executions.get(inst.instance_id), strategy.name, choice, chosen))
    return selections, executor.stats


def why_path(preds_path: Path) -> Path:
    name = preds_path.name.removesuffix(".jsonl").removesuffix(".json")
    return preds_path.with_name(f"{name}.why.jsonl")


def write_selection(selection: Selection, preds_path: Path) -> Path:
    """Writes PREDS and PREDS.why.jsonl (atomically); returns the why file's path."""
    preds_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(preds_path, "".join(p.model_dump_json() + "\n" for p in selection.predictions))
    path = why_path(preds_path)
    write_text_atomic(path, "".join(json.dumps(w, sort_keys=True) + "\n" for w in selection.why))
    return path
