"""The agent loop with CWM's episode rules, on the in-process model and the local sandbox backend.

No Docker and no HTTP: each test runs `run_task` on a small git repository made here, with
`FakeModel` replaying CWM-format replies. What a user would notice is asserted: how the episode
ended, whether CWM would grade it, what the model was shown, what the trajectory holds.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from cwm_agent.agent.config import load_config
from cwm_agent.agent.record import EpisodeRecord, ExitStatus
from cwm_agent.agent.run import run_task
from cwm_agent.agent.task import Task
from cwm_agent.agent.trajectory import Trajectory, rebuild_prompt
from cwm_agent.model.fake import FakeModel
from cwm_agent.model.scripted_server import ScriptTokenizer

pytestmark = pytest.mark.timeout(60)

BUGGY = (
    "def clamp(value, low, high):\n    if value < low:\n        return low\n"
    "    if value > high:\n        return value\n    return value\n"
)
PROBLEM = "clamp(5, 0, 3) returns 5; it should return 3."
BUDGET_RE = re.compile(r"<budget>\n\* Remaining turns: (-?\d+)\n\* Remaining tokens: (-?\d+)\n</budget>")


def call(tool: str, body: str, thinking: str = "Next step.") -> str:
    return f"{thinking}\n</think>\n<tool: {tool}>\n{body}\n</tool>"


def final(text: str = "## Summary\nFixed.") -> str:
    return f"Accepted.\n</think>\n{text}"


FIX = call(
    "edit",
    "mathy.py\n<<<<<<< SEARCH\n        return value\n    return value\n=======\n"
    + "        return high\n    return value\n>>>>>>> REPLACE",
)
DIFF = call("bash", "git diff > /tmp/fix.diff")
SUBMIT = call("submit", "/tmp/fix.diff")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "mathy.py").write_text(BUGGY)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


def episode(
    tmp_path: Path,
    repo: Path,
    replies,
    *,
    agent: dict | None = None,
    kind: str = "patch",
    problem: str = PROBLEM,
    tokenizer=None,
    sandbox: dict | None = None,
) -> tuple[EpisodeRecord, Trajectory, FakeModel]:
    model = FakeModel(replies, tokenizer=tokenizer)
    config = load_config(
        None, {"agent": agent or {}, "sandbox": {"backend": "local", "command_timeout": 20, **(sandbox or {})}}
    )
    path = tmp_path / "trajectory.jsonl"
    task = Task(task_id="clamp", problem_statement=problem, kind=kind, repo_source=str(repo))
    record = asyncio.run(run_task(task, config, model, path))
    trajectory = Trajectory.load(path)
    assert trajectory.result is not None and trajectory.result.status == record.status
    assert record.turns == len(trajectory.turns)
    return record, trajectory, model


def observations(trajectory: Trajectory) -> list[tuple[str, str]]:
    return [(t.observation.role, t.observation.content) for t in trajectory.turns if t.observation is not None]


def test_a_final_reply_after_a_submission_ends_the_episode_and_it_is_graded(tmp_path, repo):
    record, trajectory, _ = episode(tmp_path, repo, [FIX, DIFF, SUBMIT, final()])
    assert record.status is ExitStatus.SUBMITTED and record.graded
    assert "+        return high" in record.submission and record.submission.endswith("\n")
    assert record.final_diff.startswith("diff --git a/mathy.py")
    assert trajectory.turns[-1].observation is None
    # the submission is shown with its final newline before </submission>
    assert "     return value\n\n</submission>" in trajectory.turns[2].observation.content


def test_malformed_replies_before_a_submission_are_answered_without_limit(tmp_path, repo):
    malformed = [final("no call yet")] * 7 + ["never closed <tool: bash>\nls\n</tool>", call("nosuch", "x")]
    record, trajectory, _ = episode(tmp_path, repo, [*malformed, FIX, DIFF, SUBMIT, final()])
    assert record.status is ExitStatus.SUBMITTED and record.graded
    answers = observations(trajectory)[: len(malformed)]
    assert all(role == "user" for role, _ in answers)
    assert answers[0][1].startswith("FormatError: ") and answers[-1][1].startswith("NoSuchToolError: ")
    assert "<budget>" not in answers[0][1] and "<output>" not in answers[0][1]


@pytest.mark.parametrize(
    "ending",
    [final("## Summary"), call("nosuch", "x"), "t\n</think>\n<tool: bash>\nls\n</tool>\n<tool: bash>\nls\n</tool>"],
    ids=["no call", "unknown tool", "two calls"],
)
def test_after_a_submission_any_malformed_reply_ends_and_grades(tmp_path, repo, ending):
    record, _, _ = episode(tmp_path, repo, [FIX, DIFF, SUBMIT, ending])
    assert record.status is ExitStatus.SUBMITTED and record.graded and record.turns == 4


def test_after_a_submission_a_reply_without_one_think_end_is_answered(tmp_path, repo):
    record, trajectory, _ = episode(tmp_path, repo, [FIX, DIFF, SUBMIT, "forgot the tag", final()])
    assert record.status is ExitStatus.SUBMITTED and record.turns == 5
    assert trajectory.turns[3].observation.content.startswith("FormatError: ")


def test_the_turn_limit_reply_is_not_run_and_the_episode_is_not_graded(tmp_path, repo):
    record, trajectory, _ = episode(
        tmp_path, repo, [FIX, DIFF, SUBMIT, call("bash", "touch SHOULD_NOT_EXIST")], agent={"max_turns": 4}
    )
    assert record.status is ExitStatus.TURN_LIMIT and not record.graded
    assert record.submission is not None and record.graded_patch == ""
    assert "SHOULD_NOT_EXIST" not in record.final_diff
    assert trajectory.turns[-1].observation is None


def test_the_context_limit_ends_unrun_and_ungraded(tmp_path, repo):
    limits = {"context_size": 4000, "reply_max_tokens": 2000, "issue_max_tokens": 1000}
    replies = [FIX, DIFF, SUBMIT, call("bash", "seq 1 3000")] + [final()] * 3
    record, _, _ = episode(tmp_path, repo, replies, agent=limits)
    assert record.status is ExitStatus.CONTEXT_LIMIT and not record.graded


def test_the_test_generation_episode_ends_at_its_first_format_error(tmp_path, repo):
    record, _, _ = episode(tmp_path, repo, [call("bash", "ls"), final("oops")], kind="test")
    assert record.status is ExitStatus.FORMAT_ERRORS and not record.graded
    create = call("create", "test_issue.py\nprint('Issue reproduced')\n")
    record, trajectory, _ = episode(tmp_path, repo, [create, call("submit", "test_issue.py"), final()], kind="test")
    assert record.status is ExitStatus.SUBMITTED and record.graded
    assert record.submission == "print('Issue reproduced')\n"
    assert "<submission>\nprint('Issue reproduced')\n\n</submission>" in trajectory.turns[1].observation.content


def test_strict_format_ends_an_issue_episode_at_the_first_error(tmp_path, repo):
    record, _, _ = episode(tmp_path, repo, [final("no call"), FIX], agent={"strict_format": True})
    assert record.status is ExitStatus.FORMAT_ERRORS and record.turns == 1


def test_the_wall_clock_limit_stops_a_running_command(tmp_path, repo):
    record, _, _ = episode(tmp_path, repo, [call("bash", "sleep 30")], agent={"wall_clock_limit": 2})
    assert record.status is ExitStatus.TIME_LIMIT and record.elapsed < 20


def test_running_out_of_replies_is_a_model_error(tmp_path, repo):
    record, _, _ = episode(tmp_path, repo, [call("bash", "ls")])
    assert record.status is ExitStatus.MODEL_ERROR and "ran out" in record.detail


def test_the_budget_counts_down_turns_and_cwms_token_estimate(tmp_path, repo):
    record, trajectory, _ = episode(
        tmp_path, repo, [call("bash", "ls"), call("bash", "pwd"), FIX, DIFF, SUBMIT, final()]
    )
    budgets = [
        tuple(map(int, BUDGET_RE.search(c).groups())) for r, c in observations(trajectory) if r.startswith("tool")
    ]
    assert [turns for turns, _ in budgets] == [127, 126, 125, 124, 123]
    tokens = [left for _, left in budgets]
    assert tokens == sorted(tokens, reverse=True) and tokens[0] < 131072


def test_a_long_output_is_cut_in_tokens_with_the_whole_message_capped(tmp_path, repo):
    record, trajectory, model = episode(
        tmp_path, repo, [call("bash", "seq 1 5000"), FIX, DIFF, SUBMIT, final()], agent={"observation_max_tokens": 300}
    )
    role, content = observations(trajectory)[0]
    assert content.startswith("<output>\n1\n2\n3\n") and content.endswith("[...]")
    assert "</output>" not in content and "<budget>" not in content  # CWM's cap takes the wrapper too
    assert record.graded


def test_the_first_user_message_is_cut_from_the_left_keeping_the_issues_end(tmp_path, repo):
    long_issue = "filler words here. " * 3000 + "THE END OF THE ISSUE"
    _, trajectory, _ = episode(tmp_path, repo, [FIX, DIFF, SUBMIT, final()], problem=long_issue,
                               agent={"issue_max_tokens": 500})  # fmt: skip
    user = trajectory.header.user_prompt
    assert user.startswith("[...]") and "THE END OF THE ISSUE" in user and len(user) < 4000


def test_prompts_only_grow_and_the_trajectory_rebuilds_the_last_one(tmp_path, repo):
    _, trajectory, model = episode(tmp_path, repo, [call("bash", "ls"), FIX, DIFF, SUBMIT, final()],
                                   agent={"token_ids": "off"})  # fmt: skip
    texts = [p.text for p in model.prompts]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert rebuild_prompt(trajectory) == texts[-1]
    assert all(p.ids is None for p in model.prompts)


def test_token_id_prompts_extend_the_previous_prompt_and_the_reply_as_sampled(tmp_path, repo):
    record, trajectory, model = episode(tmp_path, repo, [call("bash", "ls"), FIX, DIFF, SUBMIT, final()])
    prompts = [p.ids for p in model.prompts]
    assert all(ids is not None for ids in prompts)
    for before, turn, after in zip(prompts, trajectory.turns, prompts[1:]):
        assert after == before + turn.reply_ids + turn.observation_ids
    assert trajectory.header.prompt_ids == prompts[0]


def test_special_token_strings_cannot_end_a_message_in_a_text_prompt(tmp_path, repo):
    _, trajectory, _ = episode(tmp_path, repo, [call("bash", "echo 'x<|eot_id|>y'"), FIX, DIFF, SUBMIT, final()],
                               agent={"token_ids": "off"}, tokenizer=ScriptTokenizer())  # fmt: skip
    assert "x<\\|eot_id|>y" in observations(trajectory)[0][1]


def test_token_totals_sum_what_the_model_reported(tmp_path, repo):
    record, trajectory, model = episode(tmp_path, repo, [call("bash", "ls"), FIX, DIFF, SUBMIT, final()])
    assert record.tokens.prompt == sum(t.tokens.prompt for t in trajectory.turns) > 0
    assert record.tokens.completion == sum(t.tokens.completion for t in trajectory.turns) > 0
    assert record.tokens.context == len(model.prompts[-1].ids) + len(trajectory.turns[-1].reply_ids)


def test_chat_messages_carry_cwms_roles(tmp_path, repo):
    _, _, model = episode(tmp_path, repo, [call("bash", "ls"), final("no call"), FIX, DIFF, SUBMIT, final()])
    roles = [m.role for m in model.prompts[-1].messages]
    assert roles[:6] == ["system", "user", "assistant", "tool: bash", "assistant", "user"]
