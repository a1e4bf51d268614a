"""Signals and leftovers: SIGHUP stops like SIGTERM (containers removed, the trajectory ends as
interrupted), and `sandbox prune` never touches a live run unless told to."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from cwm_agent.sandbox.base import OWNER_PID_LABEL, PROJECT_LABEL, RUN_ID_LABEL, SandboxError
from cwm_agent.sandbox.cleanup import exit_code, prune, sweep_run

pytestmark = pytest.mark.docker

HOLDER = textwrap.dedent(
    """
    import sys, time
    from cwm_agent.sandbox import SandboxConfig, make_sandbox
    with make_sandbox(SandboxConfig(run_id=sys.argv[1])) as sb:
        sb.run("sleep 60 &")
        print("ready", flush=True)
        time.sleep(60)
    """
)


def containers(client, *labels: str) -> list:
    return client.containers.list(all=True, filters={"label": [f"{PROJECT_LABEL}=cwm-agent", *labels]})


def start_holder(run_id: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, run_id], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def prune_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cwm_agent.cli", "sandbox", "prune", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_sighup_removes_the_container_and_exits_129(docker_client):
    run_id = uuid.uuid4().hex[:12]
    proc = start_holder(run_id)
    assert len(containers(docker_client, f"{RUN_ID_LABEL}={run_id}")) == 1
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=30) == 129 == exit_code(signal.SIGHUP)
    assert containers(docker_client, f"{RUN_ID_LABEL}={run_id}") == []


def test_prune_leaves_live_runs_unless_given_their_run_id(docker_client):
    run_id = uuid.uuid4().hex[:12]
    proc = start_holder(run_id)
    try:
        (live,) = containers(docker_client, f"{RUN_ID_LABEL}={run_id}")
        # An unset shell variable: an error, never "every container".
        empty = prune_cli("--run-id", "")
        assert empty.returncode == 2 and "--run-id is empty" in empty.stderr and "Traceback" not in empty.stderr
        with pytest.raises(SandboxError, match="run id is empty"):
            prune(run_id="", client=docker_client)
        sweep_run("")  # never "every container" either
        both = prune_cli("--run-id", run_id, "--all")
        assert both.returncode == 2 and "one of them" in both.stderr
        # Plain prune: only containers whose owner is gone.
        plain = prune_cli()
        assert plain.returncode == 0 and live.name not in plain.stdout
        assert containers(docker_client, f"{RUN_ID_LABEL}={run_id}") != []
        # Its run id, given explicitly: removed although its owner lives.
        named = prune_cli("--run-id", run_id)
        assert named.returncode == 0 and f"removed {live.name}" in named.stdout
        assert containers(docker_client, f"{RUN_ID_LABEL}={run_id}") == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_plain_prune_removes_what_a_killed_run_left(docker_client):
    run_id = uuid.uuid4().hex[:12]
    proc = start_holder(run_id)
    proc.kill()
    proc.wait(timeout=10)
    (left,) = containers(docker_client, f"{RUN_ID_LABEL}={run_id}")
    plain = prune_cli()
    assert plain.returncode == 0 and f"removed {left.name}" in plain.stdout
    assert containers(docker_client, f"{RUN_ID_LABEL}={run_id}") == []


def test_prune_help_says_what_all_removes():
    out = prune_cli("--help").stdout
    assert "--all" in out and "other users' live runs" in out


# -- SIGHUP during `solve` -----------------------------------------------------------------------------


def _call(tool: str, body: str, thinking: str) -> str:
    return f"{thinking}\n</think>\n<tool: {tool}>\n{body}\n</tool>"


@pytest.mark.timeout(120)
def test_sighup_during_solve_removes_the_container_and_ends_the_trajectory_as_interrupted(tmp_path, docker_client):
    from cwm_agent.agent.trajectory import Trajectory
    from cwm_agent.model.scripted_server import ScriptedServer

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    out = tmp_path / "out"
    path = out / "trajectory.jsonl"
    replies = [_call("bash", "echo first turn", "Look."), _call("bash", "sleep 100", "Wait.")]
    with ScriptedServer(replies=replies) as server:
        command = [sys.executable, "-m", "cwm_agent.cli", "solve", "--repo", str(repo), "--issue", "Fix a."]
        command += ["--model-url", server.url, "-o", str(out)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(server.generation_requests()) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
            time.sleep(1.5)  # `sleep 100` runs
            assert containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}")
            started = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            _, stderr = proc.communicate(timeout=30)
            assert time.monotonic() - started < 15
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode in (129, 143), stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    trajectory = Trajectory.load(path)
    last = json.loads(Path(path).read_text().splitlines()[-1])
    assert trajectory.result is not None and last["type"] == "result"
    assert "interrupted" in json.dumps(last)
    assert containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}") == []
