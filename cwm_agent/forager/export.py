"""`forage export`: a run folder's trajectories as training records, near-duplicates removed.

One record per trajectory (DIR/trajectories/<item_id>.jsonl):

- `item_id`, `instance_id` (the task), `kind` (patch | test), `repo`, `rollout`, `outcome` (the
  evaluation of the rollout's prediction: resolved | unresolved | empty_patch | error | not_evaluated),
  `exit_status`, `graded` (CWM would grade it), `turns`;
- `messages`: the dialogue in CWM's roles (`system`, `user`, `assistant`, `tool: NAME`), each
  `content` exactly as rendered into the prompt; assistant messages also carry `thinking`;
- `tokens`: the episode's totals: prompt (processed over all requests), completion (generated), cached,
  context (final dialogue size);
- `text`: the exact CWM text of the episode: the last request's prompt (`rebuild_prompt`: every
  earlier request is a prefix of it) + the last reply + `<|eot_id|>`; `prompt`: that last request alone;
- `training_text`: the dialogue in CWM's training layout (`render_training`: system, user and
  assistant bodies stripped, every message closed, no generation prompt);
- `token_ids`: the ids where the trajectory kept them (else absent).

Near-duplicates (`--dedup`): within each repository, MinHash over word 5-gram shingles of the
assistant and tool messages (`datasketch`, 128 permutations, fixed seed) with an LSH index at the
Jaccard threshold; trajectories are taken resolved first, then by item id, and a trajectory whose
near-duplicate was already kept is dropped. The summary says how many were kept and why each other
one was dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from cwm_agent.agent.files import write_text_atomic
from cwm_agent.agent.trajectory import Trajectory, rebuild_prompt
from cwm_agent.errors import UserError
from cwm_agent.forager.collect import eval_dir, kept_tasks
from cwm_agent.prompts.render import EOT, Message, render_training
from cwm_agent.runs.folder import RunFolder
from cwm_agent.runs.work import ItemRecord

SHINGLE = 5
NUM_PERM = 128
_WORD = re.compile(r"\w+|[^\w\s]")


class ExportError(UserError, ValueError):
    """The run folder cannot be exported; the message says why."""


def _outcome(run_dir: Path, instance_id: str, kind: str, rollout: int) -> str:
    if kind != "patch":
        return "not_evaluated"
    try:
        return json.loads((eval_dir(run_dir, rollout) / instance_id / "result.json").read_text())["outcome"]
    except (OSError, ValueError, KeyError):
        return "not_evaluated"


def _token_ids(traj: Trajectory) -> list[int] | None:
    """The whole episode's ids (first prompt, then each reply and what followed it), when all were kept."""
    if traj.header.prompt_ids is None or not traj.turns:
        return None
    ids = list(traj.header.prompt_ids)
    for turn in traj.turns:
        if turn.reply_ids is None or (turn.observation is not None and turn.observation_ids is None):
            return None
        ids += turn.reply_ids + (turn.observation_ids or [])
    return ids


def trajectory_record(path: Path, run_dir: Path, items: dict[str, ItemRecord], repos: dict[str, str]) -> dict[str, Any]:
    """The training record of one trajectory file (its `text` is None for `model.api: chat` runs)."""
    traj = Trajectory.load(path)
    item = path.name.removesuffix(".jsonl")
    meta = items.get(item)
    instance_id = meta.instance_id if meta else str(traj.header.task.get("task_id") or item)
    kind = meta.kind if meta else str(traj.header.task.get("kind") or "patch")
    rollout = meta.rollout if meta else 0
    messages: list[dict[str, Any]] = []
    turns = iter(traj.turns)
    for message in traj.messages():
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.role == "assistant":
            entry["thinking"] = next(turns).thinking
        messages.append(entry)
    try:
        prompt = rebuild_prompt(traj)
    except ValueError:
        prompt = None
    text = None
    if prompt is not None:
        text = prompt
        last = traj.turns[-1] if traj.turns else None
        if last is not None and last.observation is None:
            text += last.raw.removesuffix(EOT) + EOT
    result = traj.result
    record: dict[str, Any] = {
        "item_id": item,
        "instance_id": instance_id,
        "kind": kind,
        "repo": repos.get(instance_id, ""),
        "rollout": rollout,
        "outcome": _outcome(run_dir, instance_id, kind, rollout),
        "exit_status": result.status.value if result else "unfinished",
        "graded": result.graded if result else False,
        "turns": len(traj.turns),
        "tokens": result.tokens.model_dump()
        if result
        else {"prompt": 0, "completion": 0, "cached": None, "context": 0},
        "messages": messages,
        "prompt": prompt,
        "text": text,
        "training_text": render_training([Message(role=m["role"], content=m["content"]) for m in messages]),
    }
    ids = _token_ids(traj)
    if ids is not None:
        record["token_ids"] = ids
    return record


def _shingles(record: dict) -> set[str]:
    words = [
        w
        for m in record["messages"]
        if m["role"] == "assistant" or m["role"].startswith("tool: ")
        for w in _WORD.findall(m["content"])
    ]
    if len(words) < SHINGLE:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def _dedup(records: list[dict], threshold: float) -> dict[str, str]:
    """item_id -> the item it near-duplicates, for every record to drop."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        raise ExportError("--dedup needs datasketch: pip install 'cwm-agent[forage]'.") from None

    dropped: dict[str, str] = {}
    by_repo: dict[str, list[dict]] = {}
    for r in records:
        by_repo.setdefault(r["repo"], []).append(r)
    for repo_records in by_repo.values():
        lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        ordered = sorted(repo_records, key=lambda r: (r["outcome"] != "resolved", r["item_id"]))
        for r in ordered:
            mh = MinHash(num_perm=NUM_PERM, seed=1)
            for s in sorted(_shingles(r)):
                mh.update(s.encode("utf-8"))
            near = lsh.query(mh)
            if near:
                dropped[r["item_id"]] = sorted(near)[0]
                continue
            lsh.insert(r["item_id"], mh)
    return dropped


def export_run(
    run_dir: Path,
    output: Path,
    only_resolved: bool = False,
    max_tokens: int | None = None,
    dedup: bool = False,
    threshold: float = 0.9,
) -> dict[str, Any]:
    """Write the records to `output` (JSONL) and the summary to `<output>.summary.json`; returns the summary."""
    traj_dir = run_dir / "trajectories"
    if not traj_dir.is_dir():
        raise ExportError(
            f"{run_dir} has no trajectories/ folder; pass a `forage run` (or `swebench run`) output folder."
        )
    repos = {t.instance_id: t.repo for t in kept_tasks(run_dir)}
    items = RunFolder(run_dir).read_results()
    records, dropped = [], {}
    for path in sorted(traj_dir.glob("*.jsonl")):
        try:
            record = trajectory_record(path, run_dir, items, repos)
        except (ValueError, OSError) as exc:
            dropped[path.stem] = f"unreadable: {exc}"
            continue
        if record["exit_status"] == "unfinished":
            dropped[record["item_id"]] = "unfinished (no result record)"
        elif only_resolved and record["outcome"] != "resolved":
            dropped[record["item_id"]] = f"not resolved ({record['outcome']})"
        elif max_tokens is not None and record["tokens"]["context"] > max_tokens:
            dropped[record["item_id"]] = f"over --max-tokens ({record['tokens']['context']} > {max_tokens})"
        else:
            records.append(record)
    if dedup:
        for item, original in _dedup(records, threshold).items():
            dropped[item] = f"near-duplicate of {original}"
        records = [r for r in records if r["item_id"] not in dropped]
    write_text_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    reasons = Counter(reason.split(" (")[0].split(" of ")[0].split(":")[0] for reason in dropped.values())
    summary = {
        "run_dir": str(run_dir),
        "output": str(output),
        "kept": len(records),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(reasons.items())),
        "kept_by_outcome": dict(Counter(r["outcome"] for r in records)),
        "dropped_items": dict(sorted(dropped.items())),
        "options": {"only_resolved": only_resolved, "max_tokens": max_tokens, "dedup": dedup, "threshold": threshold},
    }
    write_text_atomic(output.with_name(output.name + ".summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary
