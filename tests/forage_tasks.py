"""One `forage tasks` generation per (count, seed) for the whole test session, its images removed at exit."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

IMAGE = "sweb.eval.x86_64.cwm-local__inflection-1:latest"
"""A real library (inflection 0.5.1) with its own tests: the local SWE-bench instance image."""


def cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "cwm-agent"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cwm_agent.cli"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _remove_images(path: Path) -> None:
    """At exit: the task images and the folder of the tasks file go (nothing of the tests is left behind)."""
    if path.exists():
        subprocess.run(["docker", "rmi", "-f", *[r["image"] for r in rows(path)]], capture_output=True)
    shutil.rmtree(path.parent, ignore_errors=True)


@cache
def generated(count: int, seed: int) -> tuple[Path, subprocess.CompletedProcess]:
    """The tasks file made by `cwm-agent forage tasks -n COUNT --seed SEED` on IMAGE, and the command's result."""
    out = Path(tempfile.mkdtemp(prefix="cwm-forage-test-")) / "tasks.jsonl"
    proc = cli("forage", "tasks", "--image", IMAGE, "-n", str(count), "--seed", str(seed), "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    atexit.register(_remove_images, out)
    return out, proc
