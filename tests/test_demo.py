"""`cwm-agent demo`: the README's first command on a machine without a GPU, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cwm_agent.agent.trajectory import ExitStatus, Trajectory
from cwm_agent.sandbox.base import OWNER_PID_LABEL, PROJECT_LABEL


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_demo_replays_the_script_and_the_patch_resolves_the_task(tmp_path, docker_client):
    script = Path(sys.executable).parent / "cwm-agent"
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]
    out = tmp_path / "demo"
    with subprocess.Popen(
        [*command, "demo", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    ) as proc:  # fmt: skip
        stdout, stderr = proc.communicate(timeout=170)
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    # Labelled as a replay before anything else is claimed.
    assert "REPLAYED MODEL" in stdout
    assert stdout.index("REPLAYED MODEL") < stdout.index("status")
    assert "submitted" in stdout
    assert "resolved" in stdout.split("evaluation", 1)[1]
    trajectory = Trajectory.load(out / "trajectory.jsonl")
    assert trajectory.result.status is ExitStatus.SUBMITTED
    assert "tinyintervals/core.py" in (out / "patch.diff").read_text()
    assert "replay" in trajectory.header.versions["model"]
    left = docker_client.containers.list(
        all=True, sparse=True, filters={"label": [f"{PROJECT_LABEL}=cwm-agent", f"{OWNER_PID_LABEL}={proc.pid}"]}
    )
    assert left == []
