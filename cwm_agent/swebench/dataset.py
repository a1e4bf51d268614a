"""SWE-bench instances and predictions: the records, and loading them from files or the Hugging Face hub."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cwm_agent.errors import UserError


class DatasetError(UserError, ValueError):
    """The dataset or predictions could not be loaded; the message says what to do."""


def _json_list(value: Any) -> Any:
    """The classic schema stores test lists as JSON text inside a string; accept both forms."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc}") from None
    return value


class SWEBenchInstance(BaseModel):
    """One task: a repository at a base commit, an issue, the fix, and the tests that judge a fix.

    Extra fields (e.g. `image`, `eval_script`, `log_parser` of 5.x-style rows) are kept as they are.
    """

    model_config = ConfigDict(extra="allow")

    instance_id: str
    repo: str
    base_commit: str
    problem_statement: str = ""
    patch: str = ""
    """The gold patch (the upstream fix, tests excluded)."""
    test_patch: str = ""
    """The patch adding the tests that show the bug; the eval script applies it."""
    version: str = ""
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    hints_text: str = ""
    created_at: str = ""
    environment_setup_commit: str = ""

    _split_lists = field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")(_json_list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # Some exports store versions as floats (0.2 instead of "0.20" is lost, but 3.0 -> "3.0" is kept).
        return str(value) if isinstance(value, (int, float)) else value

    @property
    def image(self) -> str | None:
        """The row's own image name (5.x-style datasets), if any."""
        extra = self.model_extra or {}
        value = extra.get("image") or extra.get("image_name") or extra.get("docker_image")
        return str(value) if value else None

    def as_dict(self) -> dict[str, Any]:
        """The row as the official harness expects it (test lists as lists)."""
        return self.model_dump()


class Prediction(BaseModel):
    """One line of a predictions file in the official format."""

    model_config = ConfigDict(extra="allow")

    instance_id: str
    model_name_or_path: str = "unknown"
    model_patch: str | None = None


# ---------------------------------------------------------------------------------------------
# Reading rows


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return _parse_rows(path)
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); is it the right file?"
        ) from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}.") from None


def _parse_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        if isinstance(data, dict):
            # {"instance_id": {...}, ...} (the official predictions dict form) or {"rows": [...]}.
            data = data.get("rows", data.get("instances", list(data.values())))
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of objects.")
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            try:
                import pandas as pd
            except ImportError:
                raise DatasetError(
                    f"{path}: reading parquet needs pyarrow (`pip install pyarrow`), or convert the file to .jsonl."
                ) from None
            return pd.read_parquet(path).to_dict(orient="records")
        return pq.read_table(path).to_pylist()
    raise DatasetError(f"{path}: unknown file type {suffix!r}; use .json, .jsonl or .parquet.")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for minutes."""
    import os

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, split: str) -> list[dict[str, Any]]:
    import os

    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"{name!r} is not a local file, and loading from the Hugging Face hub needs `pip install datasets`."
        ) from None
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not offline and not _hub_reachable():
        # The hub is unreachable: the cache may still hold the dataset from an earlier run. The
        # libraries read these switches at import time, so set both the environment and their config.
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
        datasets.config.HF_DATASETS_OFFLINE = True
        try:
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True
        except (ImportError, AttributeError):
            pass
        offline = True
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ...)
        if offline:
            raise DatasetError(
                f"Cannot load {name!r}: the Hugging Face hub is unreachable from this machine and the dataset "
                "is not in the local cache. Pass a local .jsonl/.json/.parquet file with --dataset instead."
            ) from None
        raise DatasetError(f"Cannot load {name!r} from the Hugging Face hub: {exc}") from None
    return [dict(row) for row in ds]


def _parse_slice(text: str) -> slice:
    try:
        start, sep, stop = text.partition(":")
        if not sep:
            raise ValueError
        return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise DatasetError(f"Bad slice {text!r}: use START:STOP, e.g. 0:50 or :10.") from None


def load_instances(
    source: str | Path,
    instance_ids: Iterable[str] | None = None,
    repos: Iterable[str] | None = None,
    slice: str | None = None,  # noqa: A002 - the CLI option's name
    shuffle_seed: int | None = None,
    split: str = "test",
) -> list[SWEBenchInstance]:
    """Instances from a local .json/.jsonl/.parquet file or a Hugging Face dataset id.

    Filters apply in this order: instance ids (unknown ids are an error), repos, shuffle (seeded),
    slice ("a:b" over what is left). Order is the file's order otherwise.
    """
    path = Path(source)
    if path.exists():
        if path.is_dir():
            raise DatasetError(f"{path} is a directory; pass a .jsonl, .json or .parquet file.")
        rows = _read_rows(path)
    elif path.suffix.lower() in {".json", ".jsonl", ".parquet"} or str(source).startswith((".", "/")):
        raise DatasetError(f"Dataset file {source} does not exist.")
    else:
        rows = _load_hub(str(source), split)

    instances = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DatasetError(f"{source}: row {number} is not an object.")
        try:
            instances.append(SWEBenchInstance.model_validate(row))
        except ValidationError as exc:
            raise DatasetError(
                f"{source}: row {number} ({row.get('instance_id', '?')}) is not a SWE-bench instance: "
                f"{_first_error(exc)}."
            ) from None

    if instance_ids:
        wanted = list(dict.fromkeys(instance_ids))
        known = {inst.instance_id for inst in instances}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise DatasetError(f"Instance ids not in {source}: {', '.join(unknown)}.")
        keep = set(wanted)
        instances = [inst for inst in instances if inst.instance_id in keep]
    if repos:
        keep_repos = set(repos)
        instances = [inst for inst in instances if inst.repo in keep_repos]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(instances)
    if slice:
        instances = instances[_parse_slice(slice)]
    return instances


def _first_error(exc: ValidationError) -> str:
    """`field: what is wrong` for the first thing pydantic found wrong in a row."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def load_predictions(path: Path) -> list[Prediction]:
    """Predictions in the official format: .jsonl, a JSON list, or a JSON dict keyed by instance id."""
    if not path.is_file():
        raise DatasetError(f"Predictions file {path} does not exist.")
    if path.suffix.lower() not in {".json", ".jsonl"}:
        raise DatasetError(f"{path}: predictions must be a .jsonl or .json file.")
    rows = _read_rows(path)
    predictions: dict[str, Prediction] = {}
    for number, row in enumerate(rows, 1):
        try:
            pred = Prediction.model_validate(row)
        except ValidationError as exc:
            raise DatasetError(
                f"{path}: prediction {number} is not in the official format "
                f"(instance_id, model_name_or_path, model_patch): {_first_error(exc)}."
            ) from None
        # A later line for the same instance wins, as when a run appended a retry.
        predictions[pred.instance_id] = pred
    if not predictions:
        raise DatasetError(f"{path}: no predictions in the file.")
    return list(predictions.values())
