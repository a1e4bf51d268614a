"""The agent loop end to end over real Docker and real HTTP: a whole episode, the chat API, a dead model
server, a lost sandbox, the prefix property (most rules are tested without Docker in test_agent_loop.py).

Each test runs `run_task` on a small git repository made here, against a `ScriptedServer`
that replays CWM-format replies (or answers from a policy function), in a real container.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from cwm_agent.agent.config import load_config
from cwm_agent.agent.record import EpisodeRecord
from cwm_agent.agent.run import run_task
from cwm_agent.agent.task import Task
from cwm_agent.agent.trajectory import ExitStatus, Trajectory, rebuild_prompt
from cwm_agent.model.client import ModelClient
from cwm_agent.model.scripted_server import Fault, ScriptedRequest, ScriptedServer
from cwm_agent.prompts.render import EOT, render_prompt
from cwm_agent.sandbox.base import PROJECT_LABEL, RUN_ID_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

PROBLEM = "clamp(5, 0, 3) returns 5; it should return 3 (values above `high` are not limited)."
BUGGY = '''\
def clamp(value, low, high):
    """Limit value to the closed range [low, high]."""
    if value < low:
        return low
    if value > high:
        return value
    return value
'''
BUDGET_RE = re.compile(r"<budget>\n\* Remaining turns: (\d+)\n\* Remaining tokens: (\d+)\n</budget>")
# Small retry budgets: a dead server must end the episode in about a second.
FAST_MODEL = {"max_retries": 1, "retry_initial_delay": 0.05, "retry_max_delay": 0.1, "retry_total_seconds": 2.0,
              "connect_timeout": 2.0, "request_timeout": 30.0}  # fmt: skip


def call(tool: str, body: str, thinking: str = "Next step.") -> str:
    """A reply in reasoning mode (it continues the prompt's `<think>\\n`) making one tool call."""
    return f"{thinking}\n</think>\n<tool: {tool}>\n{body}\n</tool>"


def final(summary: str = "Done: values above high are now limited.") -> str:
    return f"The submission was accepted.\n</think>\n{summary}"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A host git repository with one commit: a module whose `clamp` ignores its upper bound."""
    path = tmp_path / "repo"
    path.mkdir()
    (path / "mathy.py").write_text(BUGGY)
    (path / "README.md").write_text("# mathy\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "initial")
    return path


def containers_of(docker_client, run_id: str) -> list:
    return docker_client.containers.list(
        all=True, sparse=True, filters={"label": [f"{PROJECT_LABEL}=cwm-agent", f"{RUN_ID_LABEL}={run_id}"]}
    )


def episode(
    tmp_path: Path,
    repo: Path,
    server: ScriptedServer,
    docker_client,
    *,
    agent: dict | None = None,
    model: dict | None = None,
    sandbox: dict | None = None,
    sampling: dict | None = None,
    run_id: str | None = None,
    problem: str = PROBLEM,
) -> tuple[EpisodeRecord, Trajectory]:
    """Run one episode through `run_task`; checks the trajectory loads and no container is left."""
    run_id = run_id or f"test-{uuid.uuid4().hex[:8]}"
    config = load_config(
        None,
        {
            "agent": {"token_ids": "off", **(agent or {})},  # text prompts: the requests read as text
            "model": {"url": server.url, **FAST_MODEL, **(model or {})},
            "sandbox": {"command_timeout": 20, **(sandbox or {})},
            "sampling": sampling or {},
        },
    )
    task = Task(task_id="clamp", problem_statement=problem, repo_source=str(repo))
    path = tmp_path / f"{run_id}.jsonl"

    async def go() -> EpisodeRecord:
        async with ModelClient(config.model) as client:
            return await run_task(task, config, client, path, run_id=run_id)

    outcome = asyncio.run(go())
    trajectory = Trajectory.load(path)
    assert trajectory.result is not None and trajectory.result.status == outcome.status
    assert trajectory.result.turns == outcome.turns == len(trajectory.turns)
    assert containers_of(docker_client, run_id) == []
    return outcome, trajectory


def budgets(trajectory: Trajectory) -> list[tuple[int, int]]:
    """(remaining turns, remaining tokens) of each tool observation, in order."""
    out = []
    for turn in trajectory.turns:
        if turn.observation is not None and turn.observation.role.startswith("tool: "):
            found = BUDGET_RE.search(turn.observation.content)
            assert found, turn.observation.content
            out.append((int(found.group(1)), int(found.group(2))))
    return out


# -- every way the loop ends ---------------------------------------------------------------------


# The edit that fixes the bug: the upper branch returns `high`.
FIX_EDIT = call("edit", "mathy.py\n<<<<<<< SEARCH\n    if value > high:\n        return value\n=======\n"
                "    if value > high:\n        return high\n>>>>>>> REPLACE")  # fmt: skip


def test_submitted_then_summary_ends_with_the_patch(tmp_path, repo, docker_client):
    replies = [
        call("bash", "grep -n 'return value' mathy.py"),
        FIX_EDIT,
        call("bash", "git diff > /tmp/fix.patch"),
        call("submit", "/tmp/fix.patch"),
        final(),
    ]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client)
    assert outcome.status is ExitStatus.SUBMITTED
    assert outcome.turns == 5
    assert outcome.submission is not None and "+        return high" in outcome.submission
    assert trajectory.result.submission == outcome.submission
    # The harness's own diff: the fix, not the patch file (which is outside the repo anyway).
    assert "+        return high" in outcome.final_diff and "fix.patch" not in outcome.final_diff
    assert [t.action.tool if t.action else None for t in trajectory.turns] == ["bash", "edit", "bash", "submit", None]
    assert trajectory.turns[0].observation.content.startswith(
        "<output>\n6:        return value\n7:    return value\n\n</output>"
    )
    assert trajectory.turns[-1].observation is None and trajectory.turns[-1].thinking.startswith("The submission")
    assert all(t.tokens.prompt > 0 and t.tokens.completion > 0 for t in trajectory.turns)
    assert trajectory.header.system_prompt.startswith("You are a helpful")


def test_chat_api_sends_the_dialogue_as_cwm_role_messages(tmp_path, repo, docker_client):
    """With `model.api: chat` the same episode goes through /v1/chat/completions."""
    replies = [
        call("bash", "git diff > /tmp/none.patch; echo '--- x' ; sed -i 's/return value$/return high/' mathy.py"),
        call("bash", "git diff > /tmp/fix.patch"),
        call("submit", "/tmp/fix.patch"),
        "<think>\n" + final(),  # a template that leaves the opening to the model
    ]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, model={"api": "chat"})
        requests = server.generation_requests()
    assert outcome.status is ExitStatus.SUBMITTED and outcome.submission
    assert {r.endpoint for r in requests} == {"/v1/chat/completions"}
    last = requests[-1].body["messages"]
    assert [m["role"] for m in last] == ["system", "user"] + [
        "assistant",
        "tool: bash",
        "assistant",
        "tool: bash",
        "assistant",
        "tool: submit",
    ]
    assert last[2]["content"] == "<think>\n" + replies[0]
    assert last[-1]["content"].startswith("<output>\n") and "<submission>" in last[-1]["content"]
    # The trajectory is the same shape whichever endpoint was used; the exact text exists only for completions.
    assert trajectory.turns[-1].raw == final()
    assert [m.role for m in trajectory.messages()][: len(last)] == [m["role"] for m in last]
    with pytest.raises(ValueError, match="model.api: chat"):
        rebuild_prompt(trajectory)


def test_time_limit_while_a_command_runs(tmp_path, repo, docker_client):
    """A long command is cut at the wall-clock limit; the harness's diff still works afterwards."""
    replies = [call("bash", "echo partial > NOTE.txt && sleep 60 && touch /testbed/MARKER")]
    with ScriptedServer(replies=replies) as server:
        started = time.monotonic()
        outcome, trajectory = episode(
            tmp_path, repo, server, docker_client, agent={"wall_clock_limit": 3.0}, sandbox={"command_timeout": 60}
        )
        took = time.monotonic() - started
    assert outcome.status is ExitStatus.TIME_LIMIT
    assert took < 30, f"the run waited for the command ({took:.1f} s)"
    assert "NOTE.txt" in outcome.final_diff and "MARKER" not in outcome.final_diff


def _stop_soon(server: ScriptedServer) -> None:
    threading.Thread(target=server.stop, daemon=True).start()


def test_model_server_killed_mid_run(tmp_path, repo, docker_client):
    """The server goes away while answering the third request: a clear status, a valid partial trajectory."""

    def policy(request: ScriptedRequest):
        if request.index >= 2:  # the server dies here: this and every later request is dropped
            if request.index == 2:
                _stop_soon(server)
            return Fault.drop()
        return call("bash", f"echo turn {request.index}")

    server = ScriptedServer(policy=policy).start()
    try:
        started = time.monotonic()
        outcome, trajectory = episode(tmp_path, repo, server, docker_client)
        took = time.monotonic() - started
    finally:
        server.stop()
    assert outcome.status is ExitStatus.MODEL_ERROR
    assert outcome.detail
    assert [t.index for t in trajectory.turns] == [1, 2]
    assert trajectory.turns[1].observation is not None
    assert trajectory.result.detail == outcome.detail
    assert took < 30


def test_sandbox_removed_mid_episode_is_a_sandbox_error(tmp_path, repo, docker_client):
    run_id = f"test-{uuid.uuid4().hex[:8]}"

    def policy(request: ScriptedRequest):
        if request.index == 1:
            for container in containers_of(docker_client, run_id):
                container.remove(force=True)
        return call("bash", "echo still here?")

    with ScriptedServer(policy=policy) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, run_id=run_id)
    assert outcome.status is ExitStatus.SANDBOX_ERROR, (outcome.status, outcome.detail)
    assert run_id in outcome.detail  # names the container
    # The reply whose command could not run is still in the record.
    assert len(trajectory.turns) == 2 and trajectory.turns[1].observation is None


def test_container_lost_after_the_submission_keeps_the_patch(tmp_path, repo, docker_client):
    """The harness's diff fails (the container is gone), but the accepted patch and the ending stand."""
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    replies = [
        FIX_EDIT,
        call("bash", "git diff > /tmp/fix.patch"),
        call("submit", "/tmp/fix.patch"),
    ]

    def policy(request: ScriptedRequest):
        if request.index < len(replies):
            return replies[request.index]
        for container in containers_of(docker_client, run_id):
            container.remove(force=True)
        return final()

    with ScriptedServer(policy=policy) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, run_id=run_id)
    assert outcome.status is ExitStatus.SUBMITTED
    assert outcome.submission and "+        return high" in outcome.submission
    assert "final diff could not be taken" in outcome.detail
    assert outcome.final_diff == ""


# -- what the model is told each turn --------------------------------------------------------------


def test_prompts_only_grow_and_the_trajectory_rebuilds_the_last_one(tmp_path, repo, docker_client):
    replies = [
        call("bash", "cat mathy.py"),
        "No closing tag here, a format error.",
        call("edit", "mathy.py\n<<<<<<< SEARCH\n    if value >= high:\n=======\n    if value > high:\n>>>>>>> REPLACE"),
        FIX_EDIT,
        call("bash", "git diff > /tmp/fix.patch"),
        call("submit", "/tmp/fix.patch"),
        final(),
    ]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client)
        requests = server.generation_requests()
        reuse = server.prefix_reuse()
    assert outcome.status is ExitStatus.SUBMITTED
    assert len(requests) == 7
    assert reuse[0] is None and reuse[1:] == [1.0] * 6
    for before, after in zip(requests, requests[1:]):
        assert after.prompt.startswith(before.prompt + before.reply + EOT)
    # The failed edit was answered as a tool result the model can act on, not a format error.
    assert trajectory.turns[2].tool_ok is False and trajectory.turns[2].observation.role == "tool: edit"
    assert rebuild_prompt(trajectory) == requests[-1].prompt
    # The whole token stream, last reply included, from the file alone (training data).
    assert render_prompt(trajectory.messages()) == requests[-1].prompt + requests[-1].reply
