"""CWM parity (issue 9): our loop and CWM's own environment class, side by side on the same replies.

Each scripted episode is played twice: by CWM's released env (`cwm_reference.run_reference`, its own
bash session, tools and plugins in a container) and by `run_task` (our sandbox, tools and loop, with the
in-process model sending token-id prompts). With `--cwm-release` pointing at the same release, the
model's whole context must be the same token ids; with our own texts, every message must have the same
role in the same order and the episode the same ending, graded or not, with the same submission.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from cwm_agent.agent.config import load_config
from cwm_agent.agent.run import run_task
from cwm_agent.agent.task import Task
from cwm_agent.agent.trajectory import Trajectory
from cwm_agent.model.fake import FakeModel
from cwm_agent.model.tokenizer import load_tokenizer

from .cwm_reference import (
    DEFAULT_IMAGE,
    DEFAULT_REPO_FILES,
    default_release,
    default_tokenizer_model,
    missing_requirement,
    run_reference,
    split_messages,
)
from .cwm_reference import (
    load_tokenizer as load_cwm_tokenizer,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

RELEASE = default_release()
TOKENIZER = default_tokenizer_model()
_missing = missing_requirement(RELEASE, TOKENIZER)
if _missing:
    pytestmark.append(pytest.mark.skip(reason=_missing))

ISSUE = "calc.add(1, 2) returns -1 instead of 3.\nIt should return 3."


def think(action: str, thought: str = "Let me look.") -> str:
    return f"{thought}\n</think>\n{action}"


def call(tool: str, body: str) -> str:
    return think(f"<tool: {tool}>\n{body}\n</tool>")


def repo(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "repo"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=root, check=True)
    return root


def ours(tmp_path: Path, replies: list[str], *, kind: str, files: dict[str, str], release: bool, limits: dict):
    config = load_config(
        None,
        {
            "agent": {
                "max_turns": limits.get("max_turns", 128),
                "context_size": limits.get("context_size", 131072),
                "observation_max_tokens": limits.get("max_user_turn_len", 32768),
                "issue_max_tokens": limits.get("max_prompt_len", 8192),
                "token_ids": "on",
            },
            "sandbox": {"image": DEFAULT_IMAGE, "command_timeout": limits.get("session_timeout", 120.0)},
            "cwm_release": str(RELEASE) if release else None,
        },
    )
    model = FakeModel(list(replies), tokenizer=load_tokenizer(TOKENIZER))
    task = Task(task_id="parity", problem_statement=ISSUE, kind=kind, repo_source=str(repo(tmp_path, files)))
    path = tmp_path / "ours.jsonl"
    record = asyncio.run(run_task(task, config, model, path))
    trajectory = Trajectory.load(path)
    ids = list(trajectory.header.prompt_ids or [])
    for turn in trajectory.turns:
        ids += (turn.reply_ids or []) + (turn.observation_ids or [])
    return record, trajectory, ids


ENDINGS = {"graded": "submitted", "turn_limit": "turn_limit", "context_limit": "context_limit",
           "format_error": "format_errors"}  # fmt: skip

EPISODES = {
    "every_tool_and_error": dict(
        kind="patch",
        limits={"session_timeout": 3.0, "max_user_turn_len": 400},
        replies=[
            call("bash", "ls"),
            call("bash", "printf x"),
            call("edit", "calc/ops.py\n<<<<<<< SEARCH\ndef add(\n=======\ndef add(\n>>>>>>> REPLACE"),
            call("edit", "calc/ops.py\n<<<<<<< SEARCH\n  return a - b\n=======\n  return 0\n>>>>>>> REPLACE"),
            call("edit", "calc/ops.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE"),
            call("create", "calc/extra.py\nX = 1"),
            call("create", "calc/extra.py\nX = 2\n"),
            call("bash", "echo a; sleep 30; echo never"),
            call("bash", "pwd"),
            "I forgot to close my thinking " + "<tool: bash>\nls\n</tool>",
            call("frobnicate", "x"),
            think("No call at all, yet."),
            think("<tool: bash>\nls\n</tool>\n<tool: bash>\npwd\n</tool>"),
            call("bash", "seq 1 400"),
            call("submit", "/tmp/none.diff"),
            call("bash", "git diff > /tmp/p.diff && echo ok"),
            call("submit", "/tmp/p.diff"),
            think("## Summary\nFixed add."),
        ],
    ),
    "turn_limit_after_a_submission": dict(
        kind="patch",
        limits={"max_turns": 4},
        replies=[
            call("edit", "calc/ops.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE"),
            call("bash", "git diff > /tmp/p.diff"),
            call("submit", "/tmp/p.diff"),
            call("bash", "ls"),
            call("bash", "ls"),
        ],
    ),
    "test_generation": dict(
        kind="test",
        limits={},
        replies=[
            call(
                "create",
                "test_issue.py\nfrom calc import add\n"
                "print('Issue reproduced' if add(1, 2) != 3 else 'Issue resolved')\n",
            ),
            call("submit", "test_issue.py"),
            think("The test prints Issue reproduced on the original code."),
        ],
    ),
    "test_generation_format_error": dict(
        kind="test",
        limits={},
        replies=[call("bash", "ls"), think("no call")],
    ),
}


@pytest.mark.parametrize("name", sorted(EPISODES))
@pytest.mark.parametrize("release", [True, False], ids=["cwm-texts", "our-texts"])
def test_same_context_and_ending_as_cwms_environment(tmp_path, name, release):
    episode = EPISODES[name]
    limits = episode["limits"]
    reference = run_reference(
        RELEASE, episode["replies"], kind=episode["kind"], issue=ISSUE, repo_files=DEFAULT_REPO_FILES,
        config=limits, tokenizer_model=TOKENIZER,
    )  # fmt: skip
    record, trajectory, ids = ours(
        tmp_path, episode["replies"], kind=episode["kind"], files=DEFAULT_REPO_FILES, release=release, limits=limits
    )
    our_messages = split_messages(load_cwm_tokenizer(RELEASE, TOKENIZER), ids)
    if reference.ending == "running":
        pytest.fail(f"the reference episode did not end: {reference.messages[-3:]}")
    assert record.status.value == ENDINGS[reference.ending]
    assert record.graded == (reference.ending == "graded")
    if record.graded:
        assert record.submission == reference.graded_submission
    if release:
        for i, (mine, theirs) in enumerate(zip(our_messages, reference.messages)):
            assert mine == theirs, f"message {i} differs"
        assert len(our_messages) == len(reference.messages)
        assert ids == reference.context_ids
    else:
        assert [role for role, _ in our_messages] == [role for role, _ in reference.messages]
