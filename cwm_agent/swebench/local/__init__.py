"""The project's own SWE-bench-format instances: small real Python libraries with one bug each.

Each instance is a PyPI sdist (pinned, sha256-checked, downloaded on the host at build time) with a
small piece of logic reverted to an earlier, buggy form, and the upstream tests that catch it held
back into the instance's `test_patch`. The gold `patch` restores the released code.

- `cwm-local__inflection-1`: `ordinal()` forgot `abs()`, so negative numbers get wrong suffixes
  (-1 -> "-1th"). Hidden tests: the negative entries of ORDINAL_NUMBERS.
- `cwm-local__six-1`: `add_metaclass()` iterated a string `__slots__` character by character
  ("ab" -> slots "a", "b" -> KeyError). Hidden test: the string-slots part of `test_add_metaclass`.
- `cwm-local__more-itertools-1`: `split_at(..., maxsplit=N, keep_separator=True)` dropped the last
  separator. Hidden test: `SplitAtTests.test_combination`.

Files: `instances.jsonl` (the rows), `<instance_id>.base.diff` (released source -> base commit).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

LOCAL_DIR = Path(__file__).resolve().parent
INSTANCES_FILE = LOCAL_DIR / "instances.jsonl"

# Pinned like the official harness pins environments: repo -> version -> how to test, how to read the log.
PYTEST_CMD = "pytest --no-header -rA --tb=no -p no:cacheprovider"


class LocalSource(BaseModel):
    """A released sdist the instance's repository is made from."""

    package: str
    version: str
    sha256: str
    top_dir: str
    """The directory the sdist unpacks into."""


SOURCES: dict[str, LocalSource] = {
    "cwm-local/inflection": LocalSource(
        package="inflection",
        version="0.5.1",
        top_dir="inflection-0.5.1",
        sha256="1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417",
    ),
    "cwm-local/six": LocalSource(
        package="six",
        version="1.16.0",
        top_dir="six-1.16.0",
        sha256="1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926",
    ),
    "cwm-local/more-itertools": LocalSource(
        package="more-itertools",
        version="10.2.0",
        top_dir="more-itertools-10.2.0",
        sha256="8fccb480c43d3e99a00087634c06dd02b0d50fbf088b380de5a41a015ec239e1",
    ),
}

LOCAL_REPO_SPECS: dict[str, dict[str, dict[str, str]]] = {
    repo: {src.version: {"test_cmd": PYTEST_CMD, "log_parser": "pytest"}} for repo, src in SOURCES.items()
}
"""repo -> version -> {test_cmd, log_parser}: the local counterpart of the official MAP_REPO_VERSION_TO_SPECS."""
LOCAL_REPO_SPECS["cwm-agent/tinyintervals"] = {"0.1": {"test_cmd": PYTEST_CMD, "log_parser": "pytest"}}
"""The bundled demo task (cwm_agent/benchmarks/demo), built from files of our own rather than an sdist."""


def base_diff_path(instance_id: str) -> Path:
    return LOCAL_DIR / f"{instance_id}.base.diff"
