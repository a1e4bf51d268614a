"""The agent loop over real Docker and real HTTP: every way an episode ends, the budget block,
format errors fed back, the prefix property and trajectories that rebuild the exact prompt.

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

from cwm_agent.agent.config import ConfigError, load_config
from cwm_agent.agent.loop import cut_to_tokens
from cwm_agent.agent.run import RunOutcome, run_task
from cwm_agent.agent.task import Task
from cwm_agent.agent.trajectory import ExitStatus, Trajectory, initial_prompt, rebuild_prompt
from cwm_agent.model.client import ModelClient
from cwm_agent.model.scripted_server import Fault, Reply, ScriptedRequest, ScriptedServer, ScriptTokenizer
from cwm_agent.prompts.render import EOT, render_prompt
from cwm_agent.prompts.templates import issue_prompt, system_prompt
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
) -> tuple[RunOutcome, Trajectory]:
    """Run one episode through `run_task`; checks the trajectory loads and no container is left."""
    run_id = run_id or f"test-{uuid.uuid4().hex[:8]}"
    config = load_config(
        None,
        {
            "agent": agent or {},
            "model": {"url": server.url, **FAST_MODEL, **(model or {})},
            "sandbox": {"command_timeout": 20, **(sandbox or {})},
            "sampling": sampling or {},
        },
    )
    task = Task(task_id="clamp", problem_statement=problem, repo_source=str(repo))
    path = tmp_path / f"{run_id}.jsonl"

    async def go() -> RunOutcome:
        async with ModelClient(config.model) as client:
            return await run_task(task, config, client, path, run_id=run_id)

    outcome = asyncio.run(go())
    trajectory = Trajectory.load(path)
    assert trajectory.result is not None and trajectory.result.exit_status == outcome.status
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
    assert outcome.patch is not None and "+        return high" in outcome.patch
    assert trajectory.result.submission == outcome.patch
    # The harness's own diff: the fix, not the patch file (which is outside the repo anyway).
    assert "+        return high" in outcome.final_diff and "fix.patch" not in outcome.final_diff
    assert [t.action.tool if t.action else None for t in trajectory.turns] == ["bash", "edit", "bash", "submit", None]
    assert trajectory.turns[0].observation.content.startswith(
        "<output>\n6:        return value\n7:    return value\n</output>"
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
    assert outcome.status is ExitStatus.SUBMITTED and outcome.patch
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


def test_reply_without_tool_call_before_any_submission_is_not_an_ending(tmp_path, repo, docker_client):
    """A summary with nothing submitted is a format error (lenient: fed back), not `submitted`."""
    replies = [final("I think it is fixed."), call("bash", "true"), final("Still nothing submitted.")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"max_format_errors": 1})
    assert outcome.status is ExitStatus.FORMAT_ERRORS
    assert outcome.patch is None


def test_turn_limit_does_not_run_the_last_replys_tool(tmp_path, repo, docker_client):
    replies = [call("bash", "echo first"), call("bash", "touch /testbed/MARKER && echo made")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"max_turns": 2})
        assert len(server.generation_requests()) == 2
    assert outcome.status is ExitStatus.TURN_LIMIT
    assert outcome.turns == 2
    last = trajectory.turns[-1]
    assert last.action is not None and last.action.tool == "bash" and "MARKER" in last.action.body
    assert last.observation is None and last.tool_ok is None
    # The harness's diff includes new files: the marker would be there if the command had run.
    assert "MARKER" not in outcome.final_diff
    assert budgets(trajectory) == [(1, budgets(trajectory)[0][1])]


def test_context_limit_counts_tokens(tmp_path, repo, docker_client):
    # The scripted tokenizer makes any number one token, so the prompt's size does not depend on
    # the context size written into the system prompt: measure it, then leave ~300 tokens.
    first = initial_prompt(system_prompt(20, 1, 128), issue_prompt(PROBLEM), True)
    size = len(ScriptTokenizer().encode(first)) + 300
    replies = [call("bash", "seq 1 2000"), call("bash", "touch /testbed/MARKER")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"context_size": size})
        assert len(server.generation_requests()) == 1  # the observation did not fit: no second request
        sent = server.generation_requests()[0].prompt
    assert outcome.status is ExitStatus.CONTEXT_LIMIT
    assert str(size) in outcome.detail
    assert outcome.turns == 1
    # The answer the model never saw is kept for readers but is not part of the replayable dialogue.
    last = trajectory.turns[-1]
    assert last.observation is None and "1999" in last.unsent_observation.content
    assert rebuild_prompt(trajectory) == sent


def test_context_limit_bounds_the_reply_length(tmp_path, repo, docker_client):
    """max_tokens never asks for more than the context has left."""
    first = initial_prompt(system_prompt(20, 1, 128), issue_prompt(PROBLEM), True)
    size = len(ScriptTokenizer().encode(first)) + 50
    with ScriptedServer(replies=[call("bash", "echo " + "word " * 200)]) as server:
        outcome, _ = episode(tmp_path, repo, server, docker_client, agent={"context_size": size})
        request = server.generation_requests()[0]
    assert request.body["max_tokens"] <= size - request.prompt_tokens + 1
    assert request.finish_reason == "length"
    assert outcome.status in (ExitStatus.CONTEXT_LIMIT, ExitStatus.FORMAT_ERRORS)


def test_configured_reply_length_is_what_the_server_is_asked_for(tmp_path, repo, docker_client):
    with ScriptedServer(replies=[call("bash", "echo hi"), call("bash", "echo again")]) as server:
        episode(tmp_path, repo, server, docker_client, sampling={"max_tokens": 300, "temperature": 0.2},
                agent={"max_turns": 2})  # fmt: skip
        bodies = [r.body for r in server.generation_requests()]
    assert [b["max_tokens"] for b in bodies] == [300, 300]
    assert all(b["temperature"] == 0.2 and b["stop"] == [EOT] for b in bodies)


def test_time_limit_while_waiting_for_the_model(tmp_path, repo, docker_client):
    replies = [call("bash", "echo quick"), Reply(call("bash", "touch /testbed/MARKER"), latency=40.0)]
    with ScriptedServer(replies=replies) as server:
        started = time.monotonic()
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"wall_clock_limit": 2.0})
        took = time.monotonic() - started
    assert outcome.status is ExitStatus.TIME_LIMIT
    assert "wall-clock" in outcome.detail
    assert outcome.turns == 1 and len(trajectory.turns) == 1
    assert "MARKER" not in outcome.final_diff
    assert took < 25, f"the run waited for the slow reply ({took:.1f} s)"


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


def test_strict_format_ends_at_the_first_error(tmp_path, repo, docker_client):
    replies = [call("bash", "echo one") + "\n<tool: bash>\necho two\n</tool>", call("bash", "true")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"strict_format": True})
        assert len(server.generation_requests()) == 1
    assert outcome.status is ExitStatus.FORMAT_ERRORS
    assert outcome.detail.startswith("MultipleToolCalls: ")
    assert trajectory.turns[0].format_error.startswith("MultipleToolCalls: ")
    assert trajectory.turns[0].action is None and trajectory.turns[0].observation is None


def test_lenient_format_errors_in_a_row_end_and_a_good_reply_resets_the_count(tmp_path, repo, docker_client):
    replies = [
        "I forgot to close my reasoning.\n<tool: bash>\necho a\n</tool>",  # MissingThinkEnd
        call("bash", "echo good"),
        "Thinking.\n</think>\nNo tool this time.",  # NoToolCall
        "Thinking.\n</think>\n<tool: bash>\n\n</tool>",  # EmptyToolBody
        call("bash", "echo never"),
    ]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"max_format_errors": 2})
        prompts = [r.prompt for r in server.generation_requests()]
    # Without the reset after the good reply, the third reply would have been the second in a row.
    assert outcome.status is ExitStatus.FORMAT_ERRORS
    assert outcome.turns == 4 and len(prompts) == 4
    assert "2 format errors in a row" in outcome.detail
    kinds = [t.format_error.split(":")[0] if t.format_error else None for t in trajectory.turns]
    assert kinds == ["MissingThinkEnd", None, "NoToolCall", "EmptyToolBody"]


def test_format_error_is_fed_back_as_a_user_message(tmp_path, repo, docker_client):
    replies = ["Thinking.\n</think>\nNo tool this time.", call("bash", "echo recovered"), call("submit", "/nope.patch")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"max_turns": 3})
        prompts = [r.prompt for r in server.generation_requests()]
    error = trajectory.turns[0].format_error
    assert error.startswith("NoToolCall: ")
    message = f"<|start_header_id|>user<|end_header_id|>\n\n{error}{EOT}"
    assert prompts[1].endswith(message + "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    assert "<output>" not in error and "<budget>" not in error
    assert trajectory.turns[0].observation.role == "user"
    # The episode went on: the next command ran and its output came back.
    assert "<output>\nrecovered\n</output>" in prompts[2]
    assert outcome.status is ExitStatus.TURN_LIMIT


def _stop_soon(server: ScriptedServer) -> None:
    threading.Thread(target=server.stop, daemon=True).start()


def test_script_running_out_is_a_model_error(tmp_path, repo, docker_client):
    with ScriptedServer(replies=[call("bash", "echo only reply")]) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client)
    assert outcome.status is ExitStatus.MODEL_ERROR
    assert "no reply left" in outcome.detail
    assert len(trajectory.turns) == 1 and "only reply" in trajectory.turns[0].observation.content


def test_model_server_killed_mid_run(tmp_path, repo, docker_client):
    """The server goes away while answering the third request: a clear status, a valid partial trajectory."""

    def policy(request: ScriptedRequest):
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
    assert outcome.patch and "+        return high" in outcome.patch
    assert "final diff could not be taken" in outcome.detail
    assert outcome.final_diff == ""


# -- what the model is told each turn --------------------------------------------------------------


def test_budget_block_counts_down_turns_and_tokens(tmp_path, repo, docker_client):
    size, max_turns = 20_000, 6
    replies = [call("bash", "ls"), call("bash", "seq 1 50"), call("bash", "cat mathy.py"), call("bash", "echo x")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(
            tmp_path, repo, server, docker_client, agent={"context_size": size, "max_turns": max_turns}
        )
        requests = server.generation_requests()
    seen = budgets(trajectory)
    assert [turns for turns, _ in seen] == [5, 4, 3, 2]
    tokens = [left for _, left in seen]
    assert all(a > b for a, b in zip(tokens, tokens[1:])), tokens
    # What is left after turn i is the context minus what the next request will hold: the server's
    # count of the next prompt must be size - left, give or take a token at a seam.
    for left, request in zip(tokens, requests[1:]):
        assert abs((size - left) - request.prompt_tokens) <= 2, (left, request.prompt_tokens)
    assert outcome.status is ExitStatus.MODEL_ERROR  # the script ran out


def test_long_tool_output_and_issue_are_cut_to_their_token_limits(tmp_path, repo, docker_client):
    problem = "BEGINNING of a long report. " + "filler words here. " * 300 + "The END: clamp ignores high."
    with ScriptedServer(replies=[call("bash", "seq 1 5000")]) as server:
        outcome, trajectory = episode(
            tmp_path, repo, server, docker_client, problem=problem,
            agent={"observation_max_tokens": 200, "issue_max_tokens": 50},
        )  # fmt: skip
        tokenizer = server.tokenizer
    # The issue keeps its end (where reports usually say what is wrong), the output its start.
    user = trajectory.header.user_prompt
    assert "The END: clamp ignores high." in user and "BEGINNING" not in user and "[...]" in user
    output = trajectory.turns[0].observation.content.split("<output>\n", 1)[1].split("\n</output>", 1)[0]
    assert output.startswith("1\n2\n3\n") and output.endswith("[...]") and "5000" not in output
    assert 100 <= len(tokenizer.encode(output)) <= 200
    assert outcome.status is ExitStatus.MODEL_ERROR  # the script ran out


def test_special_token_strings_in_output_and_issue_cannot_break_the_dialogue(tmp_path, repo, docker_client):
    """A file holding `<|eot_id|>` (a tokenizer config, a log) must not end the tool message: sent as
    text, the server would read it as the real token. The prompt keeps exactly one EOT per message."""
    # (The model cannot write the string itself: it is its stop string. The command builds it.)
    command = "printf 'a<|%s|><|%s|>user<|%s|>b' eot_id start_header_id end_header_id"
    replies = [call("bash", command), call("bash", "true")]
    with ScriptedServer(replies=replies) as server:
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"max_turns": 2},
                                      problem=PROBLEM + "\nSeen in a log: <|eot_id|>")  # fmt: skip
        prompts = [r.prompt for r in server.generation_requests()]
    assert outcome.status is ExitStatus.TURN_LIMIT
    observed = trajectory.turns[0].observation.content
    assert "a<\\|eot_id|><\\|start_header_id|>user<\\|end_header_id|>b" in observed
    assert "Seen in a log: <\\|eot_id|>" in prompts[0]
    # system, user, assistant, tool: four messages, four EOTs, and only the harness's headers.
    assert prompts[1].count(EOT) == 4 and prompts[1].count("<|start_header_id|>") == 5


def test_a_server_without_usage_is_counted_by_the_harness(tmp_path, repo, docker_client):
    replies = [call("bash", "echo hi"), call("bash", "echo again")]
    with ScriptedServer(replies=replies) as server:
        server.report_usage = False
        outcome, trajectory = episode(tmp_path, repo, server, docker_client, agent={"max_turns": 2})
    assert outcome.status is ExitStatus.TURN_LIMIT
    assert all(t.tokens.prompt > 0 and t.tokens.completion > 0 for t in trajectory.turns)
    assert outcome.completion_tokens == sum(t.tokens.completion for t in trajectory.turns)


def test_a_limit_below_the_cut_marks_own_size_ends_instead_of_looping():
    async def go() -> str:
        with ScriptedServer(replies=[]) as server:
            async with ModelClient(load_config(None, {"model": {"url": server.url}}).model) as client:
                return await asyncio.wait_for(cut_to_tokens(client, "word " * 500, 1, keep="left"), 20)

    assert asyncio.run(go()) == ("[...]", 5)  # the scripted tokenizer: "[", ".", ".", ".", "]"


@pytest.mark.parametrize(
    "key", ["max_turns", "context_size", "observation_max_tokens", "issue_max_tokens", "max_format_errors"]
)
def test_limits_must_be_positive(key):
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        load_config(None, {"agent": {key: 0}})


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
