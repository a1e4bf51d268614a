"""The run folder: its files, its manifest, its lock, and its results read back and appended.

```
RUN_DIR/
  run.json          manifest written when a run starts (see `Manifest`)
  run.lock          held (flock) while a run writes the folder; the holder's pid inside
  results.jsonl     one `ItemRecord` per finished work item
  preds.jsonl       official predictions of rollout 0 of kind patch (SWE-bench runs)
  preds/rollout-<k>.jsonl   the same for every rollout k, when rollouts > 1
  trajectories/<item_id>.jsonl
  eval/             `swebench eval` output of preds.jsonl
  logs/harness.log  full tracebacks of unexpected errors
```

results.jsonl is appended (and fsynced) as items finish, so a killed run loses at most the items in
flight; a line cut by `kill -9` is dropped when read back. At the end of a run it is rewritten in
the run's order (dataset order; per instance: patch rollouts, then test rollouts), one line per
item, the last record of each winning: the same final file however often the run was resumed.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field

from cwm_agent import __version__
from cwm_agent.agent.files import write_text_atomic
from cwm_agent.errors import UserError
from cwm_agent.runs.work import ItemRecord

RUN_JSON = "run.json"
LOCK = "run.lock"
RESULTS = "results.jsonl"
HARNESS_LOG = Path("logs") / "harness.log"


class RunFolderError(UserError):
    """The run folder cannot be used as asked (locked, or holding a different run)."""


class DatasetInfo(BaseModel):
    source: str
    """A file's absolute path, or a Hugging Face id."""
    split: str | None = None
    filters: dict[str, Any] = Field(default_factory=dict)
    """The selection asked for (instance ids, repos, slice, shuffle seed) by the latest run."""
    instance_count: int = 0
    ids_hash: str = ""
    """sha256 of the selected instance ids, in order, by the latest run."""
    rows: dict[str, str] = Field(default_factory=dict)
    """Instance id -> a hash of its dataset row, for every instance any run of this folder used."""


class ModelInfo(BaseModel):
    id: str
    urls: list[str] = Field(default_factory=list)
    """Every endpoint that served this folder, first one first."""


class Manifest(BaseModel):
    """run.json: what a run folder holds, fixed when the first run starts."""

    kind: str = "swebench"
    """Which command made the folder (`swebench`, `forage`, ...)."""
    run_ids: list[str] = Field(default_factory=list)
    """One per process that wrote the folder, first one first (container labels; `sandbox prune --run-id`)."""
    created_at: str = ""
    harness_version: str = __version__
    dataset: DatasetInfo
    model: ModelInfo
    config: dict[str, Any]
    """The RunConfig, as JSON."""
    rollouts: int = 1
    test_rollouts: int = 0
    seed: int | None = None
    grade_unfinished: bool = False
    mixed: bool = False
    """A run continued this folder with different settings (`--allow-mixed`); results lines then carry theirs."""


CONNECTION_KEYS = {"url", "api_key", "request_timeout", "connect_timeout", "max_retries", "retry_total_seconds",
                   "retry_initial_delay", "retry_max_delay", "max_concurrency", "tokenizer"}  # fmt: skip
"""Model settings that say how to reach a server, not which model or how it samples: may change on resume."""


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with the connection settings left out (a resume may reach the same model elsewhere)."""
    config = json.loads(json.dumps(config))
    model = config.get("model")
    if isinstance(model, dict):
        for key in CONNECTION_KEYS | {"model"}:  # the model id is compared on its own
            model.pop(key, None)
    sandbox = config.get("sandbox")
    if isinstance(sandbox, dict):
        sandbox.pop("run_id", None)
    return config


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differences(old: Manifest, new: Manifest) -> list[str]:
    """What makes `new` a different run from `old`, each as `what: old -> new` (empty: the same run)."""
    found = []
    if old.model.id != new.model.id:
        found.append(f"model {old.model.id!r} -> {new.model.id!r}")
    if old.dataset.source != new.dataset.source or old.dataset.split != new.dataset.split:
        was = old.dataset.source + (f" ({old.dataset.split})" if old.dataset.split else "")
        now = new.dataset.source + (f" ({new.dataset.split})" if new.dataset.split else "")
        found.append(f"dataset {was} -> {now}")
    changed_rows = [i for i, h in new.dataset.rows.items() if old.dataset.rows.get(i, h) != h]
    if changed_rows:
        more = f" and {len(changed_rows) - 1} more" if len(changed_rows) > 1 else ""
        found.append(f"dataset row of {changed_rows[0]}{more} changed")
    for name in ("rollouts", "test_rollouts", "seed"):
        if getattr(old, name) != getattr(new, name):
            flag = "--" + name.replace("_", "-")
            found.append(f"{flag} {getattr(old, name)} -> {getattr(new, name)}")
    was, now = _flat(comparable_config(old.config)), _flat(comparable_config(new.config))
    for key in sorted(set(was) | set(now)):
        if was.get(key, "(unset)") != now.get(key, "(unset)"):
            found.append(f"{key} {was.get(key, '(unset)')!r} -> {now.get(key, '(unset)')!r}")
    if old.harness_version != new.harness_version:
        found.append(f"harness version {old.harness_version} -> {new.harness_version}")
    return found


def row_hash(row: Any) -> str:
    """A short hash of a dataset row (any JSON-able value)."""
    text = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def ids_hash(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunLock:
    """An exclusive `flock` on RUN_DIR/run.lock, held while this process writes the folder.

    The kernel drops it when the process dies (even by kill -9), so a stale lock never blocks a resume.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"{self.path.parent} is being written by another run (pid {holder}); wait for it to end, "
                "or pass another --output."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Appender:
    """Appends whole JSON lines and fsyncs each; rewrites the file first so appends start on a clean line."""

    def __init__(self, path: Path, existing_lines: Iterable[str] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(line + "\n" for line in existing_lines))
        self._fh = path.open("a", encoding="utf-8")

    def append(self, record: BaseModel) -> None:
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def write_if_changed(path: Path, text: str) -> None:
    """A resume with nothing new leaves a file as it was (contents and times)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)


class RunFolder:
    """One run folder on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RunLock(path / LOCK)

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def manifest_path(self) -> Path:
        return self.path / RUN_JSON

    @property
    def log_path(self) -> Path:
        return self.path / HARNESS_LOG

    def trajectory(self, item_id: str) -> Path:
        return self.path / "trajectories" / f"{item_id}.jsonl"

    def read_manifest(self) -> Manifest | None:
        if not self.manifest_path.exists():
            return None
        try:
            return Manifest.model_validate_json(self.manifest_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise RunFolderError(
                f"{self.manifest_path} is not a run manifest ({str(exc).splitlines()[0]}); "
                "pass another --output, or remove the file to start the folder's record afresh."
            ) from None

    def write_manifest(self, manifest: Manifest) -> None:
        write_text_atomic(self.manifest_path, manifest.model_dump_json(indent=2) + "\n")

    def read_results(self) -> dict[str, ItemRecord]:
        """Records by item id (the last line wins); a torn or foreign line is skipped."""
        records: dict[str, ItemRecord] = {}
        if not self.results_path.exists():
            return records
        for line in self.results_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = ItemRecord.model_validate_json(line)
            except ValueError:
                continue
            records[record.item_id] = record
        return records

    def open(self, manifest: Manifest, allow_mixed: bool = False, write: bool = True) -> tuple[Manifest, list[str]]:
        """Take the lock and record `manifest` for this run; returns the manifest written and the differences
        from the folder's earlier one (non-empty only with `allow_mixed`).

        A folder holding a different run is refused (`RunFolderError` naming the first difference) unless
        `allow_mixed`. `write=False` (a run with nothing to do) leaves an existing manifest as it is.
        Must be followed by `close()`.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            old = self.read_manifest()
            diffs: list[str] = []
            if old is None:
                manifest.created_at = manifest.created_at or now_iso()
            else:
                diffs = differences(old, manifest)
                if diffs and not allow_mixed:
                    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
                    raise RunFolderError(
                        f"{self.path} holds a run with other settings: {diffs[0]}{more}; pass another --output, "
                        "or --allow-mixed to continue it anyway (each result then records its settings)."
                    )
                rows = {**old.dataset.rows, **manifest.dataset.rows}
                manifest.dataset.rows = rows
                manifest.run_ids = [*old.run_ids, *[r for r in manifest.run_ids if r not in old.run_ids]]
                manifest.model.urls = list(dict.fromkeys([*old.model.urls, *manifest.model.urls]))
                manifest.created_at = old.created_at
                manifest.mixed = old.mixed or bool(diffs)
                if diffs:  # the folder's record keeps the first run's settings; results carry the later ones
                    manifest = old.model_copy(
                        update={
                            "run_ids": manifest.run_ids,
                            "mixed": True,
                            "dataset": old.dataset.model_copy(update={"rows": rows}),
                            "model": old.model.model_copy(update={"urls": manifest.model.urls}),
                        }
                    )
            if write or old is None:
                self.write_manifest(manifest)
        except BaseException:
            self.lock.release()
            raise
        return manifest, diffs

    def close(self) -> None:
        self.lock.release()


class _LazyFileHandler(logging.FileHandler):
    """Makes the log's folder with the file, on the first record: a run without surprises leaves no logs/."""

    def _open(self):  # noqa: ANN202 - logging's own hook
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def harness_logger(folder: RunFolder) -> tuple[logging.Handler, Any]:
    """Send the package's warnings and errors to logs/harness.log (not the terminal) until `restore()`.

    Returns the handler and a restore function. The log file is made on the first record only.
    """
    package = logging.getLogger("cwm_agent")
    handler = _LazyFileHandler(folder.log_path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    before = package.propagate, package.level
    package.addHandler(handler)
    package.propagate = False
    if package.level == logging.NOTSET or package.level > logging.WARNING:
        package.setLevel(logging.WARNING)

    def restore() -> None:
        package.removeHandler(handler)
        handler.close()
        package.propagate, level = before
        package.setLevel(level)

    return handler, restore
