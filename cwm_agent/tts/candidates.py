"""An instance's rollouts read back from a run folder, and its distinct candidate patches.

Patches come from the official predictions of each rollout (`preds/rollout-<k>.jsonl`, or
`preds.jsonl` for rollout 0): "" there means CWM would not grade the episode, so it is no
candidate. Generated tests come from the `test` lines of `results.jsonl` that CWM would grade. Tokens
come from `results.jsonl`; a rollout's size is its final dialogue (`tokens.context`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cwm_agent.errors import UserError
from cwm_agent.tts.patches import is_empty, patch_id, touched_files
from cwm_agent.tts.testgen import generated_test_id, source_from_submission


class RunFolderError(UserError):
    """The run folder is missing or is not one `swebench run` wrote."""


@dataclass
class PatchRollout:
    rollout: int
    patch: str
    tokens: int
    """Size of the rollout's final dialogue in tokens (0 when unknown)."""
    patch_id: str | None
    """None for an empty patch."""


@dataclass
class Candidate:
    """One distinct non-empty patch of an instance (rollouts merged after normalisation)."""

    patch_id: str
    patch: str
    """The text of the earliest rollout that produced it: the one submitted when it is chosen."""
    rollouts: list[int]
    tokens: int
    """The fewest tokens among its rollouts."""
    files: list[str]

    @property
    def votes(self) -> int:
        return len(self.rollouts)

    @property
    def rollout(self) -> int:
        """The rollout whose text this candidate submits."""
        return self.rollouts[0]


@dataclass
class GeneratedTest:
    """One distinct generated test of an instance (identical sources merged)."""

    test_id: str
    source: str
    rollouts: list[int]


@dataclass
class InstanceCandidates:
    instance_id: str
    patches: list[PatchRollout] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    tests: list[GeneratedTest] = field(default_factory=list)
    test_rollouts: int = 0
    """Test-generation rollouts that ran (graded or not)."""
    problem_statement: str = ""
    """The issue text (filled in when the dataset is loaded; for strategies that read it)."""

    def candidate(self, pid: str) -> Candidate:
        return next(c for c in self.candidates if c.patch_id == pid)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill
    return rows


def rollout_pred_files(run_dir: Path) -> dict[int, Path]:
    """rollout -> its predictions file: `preds.jsonl` is rollout 0 (`swebench run` writes
    `preds/rollout-<k>.jsonl` for the others; a `preds/rollout-0.jsonl` is used when present)."""
    found: dict[int, Path] = {}
    for path in sorted((run_dir / "preds").glob("rollout-*.jsonl")):
        try:
            found[int(path.stem.split("-", 1)[1])] = path
        except ValueError:
            continue
    if 0 not in found and (run_dir / "preds.jsonl").exists():
        found[0] = run_dir / "preds.jsonl"
    return dict(sorted(found.items()))


def read_results(run_dir: Path) -> list[dict]:
    path = run_dir / "results.jsonl"
    return _read_jsonl(path) if path.exists() else []


def _size(tokens: dict | None) -> int:
    tokens = tokens or {}
    return int(tokens.get("context") or 0) or int(tokens.get("prompt") or 0) + int(tokens.get("completion") or 0)


def load_candidates(run_dir: Path, instance_ids: list[str] | None = None) -> list[InstanceCandidates]:
    """Every instance of the run (or of `instance_ids`), in the order of the rollout-0 predictions."""
    if not run_dir.is_dir():
        raise RunFolderError(f"--run {run_dir}: no such directory; pass the output folder of `swebench run`.")
    check_not_running(run_dir)
    pred_files = rollout_pred_files(run_dir)
    if not pred_files:
        raise RunFolderError(
            f"--run {run_dir}: no preds/rollout-<k>.jsonl nor preds.jsonl; is it a `swebench run` output folder?"
        )
    results = read_results(run_dir)
    sizes = {
        (r.get("instance_id"), r.get("rollout", 0)): _size(r.get("tokens"))
        for r in results
        if r.get("kind", "patch") == "patch"
    }
    by_id: dict[str, InstanceCandidates] = {}
    for k, path in pred_files.items():
        for row in _read_jsonl(path):
            iid = row.get("instance_id")
            if not iid or (instance_ids is not None and iid not in instance_ids):
                continue
            patch = row.get("model_patch") or ""
            inst = by_id.setdefault(iid, InstanceCandidates(iid))
            inst.patches = [p for p in inst.patches if p.rollout != k]
            pid = None if is_empty(patch) else patch_id(patch)
            inst.patches.append(PatchRollout(k, patch, sizes.get((iid, k), 0), pid))
    for row in results:
        if row.get("kind") != "test" or row.get("instance_id") not in by_id:
            continue
        inst = by_id[row["instance_id"]]
        inst.test_rollouts += 1
        source = source_from_submission(row.get("submission")) if row.get("graded") else None
        if source is None:
            continue
        tid = generated_test_id(source)
        test = next((t for t in inst.tests if t.test_id == tid), None)
        if test is None:
            inst.tests.append(GeneratedTest(tid, source, [int(row.get("rollout", 0))]))
        else:
            test.rollouts.append(int(row.get("rollout", 0)))
    for inst in by_id.values():
        inst.patches.sort(key=lambda p: p.rollout)
        inst.tests.sort(key=lambda t: min(t.rollouts))
        groups: dict[str, Candidate] = {}
        for p in inst.patches:
            if p.patch_id is None:
                continue
            cand = groups.get(p.patch_id)
            if cand is None:
                groups[p.patch_id] = Candidate(p.patch_id, p.patch, [p.rollout], p.tokens, touched_files(p.patch))
            else:
                cand.rollouts.append(p.rollout)
                cand.tokens = min(cand.tokens, p.tokens) if cand.tokens and p.tokens else cand.tokens or p.tokens
        inst.candidates = list(groups.values())
    if instance_ids is not None:
        unknown = [i for i in instance_ids if i not in by_id]
        if unknown:
            raise RunFolderError(f"--instance-ids: not in the run: {', '.join(unknown)}")
    return list(by_id.values())


def check_not_running(run_dir: Path) -> None:
    """Refuse a folder a run is still writing: its rollouts are not all in yet."""
    from cwm_agent.runs.folder import LOCK, RunLock
    from cwm_agent.runs.folder import RunFolderError as Locked

    if not (run_dir / LOCK).exists():
        return
    lock = RunLock(run_dir / LOCK)
    try:
        lock.acquire()
    except Locked:
        holder = (run_dir / LOCK).read_text(errors="replace").strip() or "unknown"
        raise RunFolderError(
            f"--run {run_dir}: a run (pid {holder}) is still writing it; select when it has ended."
        ) from None
    lock.release()


def read_manifest(run_dir: Path) -> dict:
    """run.json, or {} when the run predates it."""
    path = run_dir / "run.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
