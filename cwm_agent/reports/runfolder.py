"""A run folder read back for review: its results joined with its evaluation and trajectories.

Reads both layouts a run folder has had, every field beyond the instance id optional:
- `results.jsonl` lines of `swebench run` (instance_id, status, detail, submitted, turns,
  context_tokens, completion_tokens, elapsed), one per instance;
- the multi-rollout layout (`run.json`; lines with kind, rollout, item_id, graded, submission,
  tokens {prompt, completion, cached, context}, model_seconds, tool_seconds).
Trajectories are `trajectories/<item_id>.jsonl`; the evaluation of `preds.jsonl` (rollout 0 of kind
patch) is `eval/<instance_id>/{result.json,report.json}` and `eval/report.json`. Other rollouts'
evaluations are read where the project's evaluators put them (`rollout_eval_root`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cwm_agent.errors import UserError

ERROR_STATUSES = {"model_error", "sandbox_error", "image_error", "harness_error"}
"""Endings that say nothing about the model (the harness or the server failed)."""


class RunFolderError(UserError):
    """A path given as a run folder is not one (or lacks what was asked for)."""


class Tokens(BaseModel):
    prompt: int = 0
    completion: int = 0
    cached: int | None = None
    context: int = 0


class ItemResult(BaseModel):
    """One line of results.jsonl in either layout, normalised."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str
    kind: str = "patch"
    rollout: int = 0
    item_id: str = ""
    status: str = "unknown"
    detail: str = ""
    graded: bool | None = None
    submitted: bool | None = None
    submission: str | None = None
    turns: int = 0
    tokens: Tokens = Field(default_factory=Tokens)
    context_tokens: int = 0
    completion_tokens: int = 0
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    elapsed: float = 0.0
    endpoint: str | None = None

    def model_post_init(self, _context: object) -> None:
        if not self.item_id:
            self.item_id = item_id(self.instance_id, self.kind, self.rollout)
        # The old layout's token fields fill the new one's.
        if not self.tokens.completion and self.completion_tokens:
            self.tokens.completion = self.completion_tokens
        if not self.tokens.context and self.context_tokens:
            self.tokens.context = self.context_tokens
        if self.submitted is None:
            self.submitted = bool(self.submission) if self.submission is not None else bool(self.graded)
        if self.graded is None:
            # The old layout graded every submitted episode.
            self.graded = bool(self.submitted)

    @property
    def errored(self) -> bool:
        return self.status in ERROR_STATUSES


def item_id(instance_id: str, kind: str = "patch", rollout: int = 0) -> str:
    """The run folder's name of one episode: the instance id for (patch, rollout 0)."""
    if kind == "patch" and rollout == 0:
        return instance_id
    return f"{instance_id}.{kind}-{rollout}"


def repo_of(instance_id: str) -> str:
    """`django__django-11099` -> `django/django` (SWE-bench's naming); else the id up to its last dash."""
    owner_repo = instance_id.rsplit("-", 1)[0]
    return owner_repo.replace("__", "/", 1)


@dataclass
class TestResults:
    """Which of an instance's FAIL_TO_PASS / PASS_TO_PASS tests passed and failed."""

    fail_to_pass_ok: list[str] = field(default_factory=list)
    fail_to_pass_failed: list[str] = field(default_factory=list)
    pass_to_pass_ok: list[str] = field(default_factory=list)
    pass_to_pass_failed: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """The evaluation of one prediction (eval/<instance_id>/)."""

    outcome: str
    """resolved | unresolved | empty_patch | error"""
    error: str = ""
    applied: bool | None = None
    tests: TestResults | None = None
    folder: Path | None = None

    @property
    def resolved(self) -> bool:
        return self.outcome == "resolved"


def rollout_eval_root(run_dir: Path, eval_dir: Path, rollout: int) -> Path | None:
    """The folder holding rollout k's evaluation: EVAL itself for rollout 0; for k > 0 the first that
    exists of EVAL/rollout-<k>/ (`swebench eval` of preds/rollout-<k>.jsonl into it), RUN/eval-rollout-<k>/
    (`forage run`), RUN/tts/eval/rollout-<k>/ (the test-time-scaling report); None when none does."""
    if rollout == 0:
        return eval_dir
    found = [
        eval_dir / f"rollout-{rollout}",
        run_dir / f"eval-rollout-{rollout}",
        run_dir / "tts" / "eval" / f"rollout-{rollout}",
    ]
    return next((d for d in found if d.is_dir()), None)


def eval_folder(run_dir: Path, eval_dir: Path, instance_id: str, rollout: int = 0) -> Path | None:
    """The folder of an instance's evaluation for `rollout`, or None."""
    root = rollout_eval_root(run_dir, eval_dir, rollout)
    return None if root is None else root / instance_id


def load_evaluation(folder: Path) -> Evaluation | None:
    """The outcome recorded in `folder` (result.json, and report.json's test statuses), or None."""
    try:
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or "outcome" not in result:
        return None
    evaluation = Evaluation(outcome=str(result["outcome"]), error=str(result.get("error") or ""), folder=folder)
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        entry = next(iter(report.values())) if isinstance(report, dict) and report else {}
    except (OSError, ValueError):
        entry = {}
    if isinstance(entry, dict) and entry:
        evaluation.applied = entry.get("patch_successfully_applied")
        status = entry.get("tests_status") or {}
        if status:
            f2p, p2p = status.get("FAIL_TO_PASS", {}), status.get("PASS_TO_PASS", {})
            evaluation.tests = TestResults(
                fail_to_pass_ok=list(f2p.get("success", [])),
                fail_to_pass_failed=list(f2p.get("failure", [])),
                pass_to_pass_ok=list(p2p.get("success", [])),
                pass_to_pass_failed=list(p2p.get("failure", [])),
            )
    return evaluation


@dataclass
class Item:
    """One work item of a run: its result line (None while it runs), trajectory and evaluation."""

    instance_id: str
    kind: str
    rollout: int
    item_id: str
    result: ItemResult | None
    trajectory: Path | None
    evaluation: Evaluation | None = None

    @property
    def repo(self) -> str:
        return repo_of(self.instance_id)

    @property
    def status(self) -> str:
        return self.result.status if self.result else "running"

    @property
    def resolved(self) -> bool | None:
        """True/False when evaluated, None when not."""
        return None if self.evaluation is None else self.evaluation.resolved


@dataclass
class RunFolder:
    path: Path
    manifest: dict
    items: list[Item]
    eval_dir: Path | None
    eval_summary: dict | None
    """eval/report.json (the official run report), when the run was evaluated."""

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def kinds(self) -> list[str]:
        return sorted({i.kind for i in self.items}, key=lambda k: (k != "patch", k))

    @property
    def rollouts(self) -> int:
        declared = self.manifest.get("rollouts")
        seen = 1 + max((i.rollout for i in self.items if i.kind == "patch"), default=0)
        return max(int(declared) if isinstance(declared, int) else 1, seen)

    def instance_ids(self) -> list[str]:
        """Every instance of the run, in first-seen order."""
        return list(dict.fromkeys(i.instance_id for i in self.items))

    def dataset_size(self) -> int:
        dataset = self.manifest.get("dataset")
        if isinstance(dataset, dict):
            for key in ("instance_count", "instances", "count"):
                if isinstance(dataset.get(key), int):
                    return dataset[key]
        if self.eval_summary and isinstance(self.eval_summary.get("total_instances"), int):
            return max(self.eval_summary["total_instances"], len(self.instance_ids()))
        return len(self.instance_ids())

    def find(self, instance_id: str, kind: str = "patch", rollout: int = 0) -> Item | None:
        return next((i for i in self.items if (i.instance_id, i.kind, i.rollout) == (instance_id, kind, rollout)), None)


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("results.jsonl", "run.json", "trajectories"))


def _read_results(path: Path) -> list[ItemResult]:
    """Lines of results.jsonl, the last line of an item winning; a torn or foreign line is skipped."""
    found: dict[str, ItemResult] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = ItemResult.model_validate_json(line)
        except ValueError:
            continue
        found[record.item_id] = record
    return list(found.values())


def split_item_id(stem: str) -> tuple[str, str, int]:
    """`repo__x-1.test-3` -> (`repo__x-1`, `test`, 3); a bare instance id is (id, patch, 0)."""
    head, dot, tail = stem.rpartition(".")
    if dot:
        kind, dash, number = tail.rpartition("-")
        if dash and kind in ("patch", "test") and number.isdigit():
            return head, kind, int(number)
    return stem, "patch", 0


def load_run(path: Path, eval_dir: Path | None = None) -> RunFolder:
    """Read the run folder at `path`; its evaluation from `eval_dir` (default: `path`/eval)."""
    if not path.exists():
        raise RunFolderError(f"{path}: no such folder")
    if not is_run_folder(path):
        raise RunFolderError(f"{path} is not a run folder (no results.jsonl, run.json or trajectories/)")
    try:
        manifest = json.loads((path / "run.json").read_text(encoding="utf-8"))
        manifest = manifest if isinstance(manifest, dict) else {}
    except (OSError, ValueError):
        manifest = {}
    results = _read_results(path / "results.jsonl")
    traj_dir = path / "trajectories"
    trajectories = {p.stem: p for p in sorted(traj_dir.glob("*.jsonl"))} if traj_dir.is_dir() else {}
    items: list[Item] = []
    for record in results:
        items.append(
            Item(
                record.instance_id,
                record.kind,
                record.rollout,
                record.item_id,
                record,
                trajectories.get(record.item_id),
            )
        )
    known = {i.item_id for i in items}
    # A trajectory without a result line: an episode still running (or killed).
    for stem, traj in trajectories.items():
        if stem not in known:
            instance, kind, rollout = split_item_id(stem)
            items.append(Item(instance, kind, rollout, stem, None, traj))
    if eval_dir is None:
        eval_dir = path / "eval"
    elif not eval_dir.is_dir():
        raise RunFolderError(f"--eval {eval_dir}: no such folder")
    eval_summary = None
    try:
        eval_summary = json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        eval_summary = None
    folders: dict[int, Path | None] = {}
    for item in items:
        if item.kind != "patch":
            continue
        if item.rollout not in folders:
            folders[item.rollout] = rollout_eval_root(path, eval_dir, item.rollout)
        root = folders[item.rollout]
        if root is not None and root.is_dir():
            item.evaluation = load_evaluation(root / item.instance_id)
    if not eval_dir.is_dir():
        eval_dir = None
    order = {iid: n for n, iid in enumerate(dict.fromkeys(i.instance_id for i in items))}
    items.sort(key=lambda i: (order[i.instance_id], i.kind != "patch", i.kind, i.rollout))
    return RunFolder(path, manifest, items, eval_dir, eval_summary)
