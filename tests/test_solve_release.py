"""`--cwm-release` on the command line: CWM's exact texts read from a checkout, or one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cwm_agent.agent.trajectory import Trajectory
from cwm_agent.model.scripted_server import ScriptedServer

RELEASE = Path(__file__).resolve().parents[1].parent / "shared" / "cwm-release"
CLI = [sys.executable, "-m", "cwm_agent.cli"]
CALL = "Look.\n</think>\n<tool: bash>\nls\n</tool>"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "a.py").write_text("x = 1\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "i"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


def solve(repo: Path, out: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["solve", "--repo", str(repo), "--issue", "x is 1", "--model-url", url, "-o", str(out), "--sandbox", "local"]
    return subprocess.run([*CLI, *args, "-q", *extra], capture_output=True, text=True, timeout=120)


def test_a_path_that_is_not_cwms_release_is_one_line_before_anything_runs(tmp_path, repo):
    not_release = tmp_path / "elsewhere"
    not_release.mkdir()
    with ScriptedServer([CALL]) as server:
        proc = solve(repo, tmp_path / "out", server.url, "--cwm-release", str(not_release))
        assert server.generation_requests() == []
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "swerl" in proc.stderr and str(not_release) in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not RELEASE.is_dir(), reason=f"{RELEASE} is missing (CWM's release, from the shared data)")
def test_cwm_release_and_set_options_reach_the_episode(tmp_path, repo):
    with ScriptedServer([CALL, "Done.\n</think>\nno call"]) as server:
        proc = solve(repo, tmp_path / "out", server.url, "--cwm-release", str(RELEASE), "-c", "agent.max_turns=2")
    assert proc.returncode == 1, proc.stderr  # the turn limit: nothing graded
    trajectory = Trajectory.load(tmp_path / "out" / "trajectory.jsonl")
    assert trajectory.header.texts == str(RELEASE.resolve())
    assert "for at most 2 turns" in trajectory.header.system_prompt
    assert trajectory.header.user_prompt.startswith("Solve the following issue")
    assert trajectory.result.status.value == "turn_limit"
