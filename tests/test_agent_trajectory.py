"""Trajectory files read back: a file cut by a kill still loads, damage elsewhere is reported,
and the dialogue rebuilds into the exact prompt text (no Docker needed)."""

from __future__ import annotations

import pytest

from cwm_agent.agent.trajectory import (
    Action,
    ExitStatus,
    Header,
    Result,
    TokenCounts,
    Trajectory,
    TrajectoryWriter,
    initial_prompt,
    rebuild_prompt,
)  # fmt: skip
from cwm_agent.prompts.render import Message, render_continuation, render_prompt


def header() -> Header:
    return Header(
        run_id="r1", started_at=0.0, versions={}, task={}, config={}, reasoning=True,
        system_prompt="SYSTEM", user_prompt="Fix the bug.",
    )  # fmt: skip


def turn(index: int, raw: str, output: str | None):
    from cwm_agent.agent.trajectory import Turn

    observation = None if output is None else Message(role="tool: bash", content=f"<output>\n{output}\n</output>")
    return Turn(index=index, raw=raw, action=Action(tool="bash", body="ls"), observation=observation,
                tokens=TokenCounts(prompt=10, completion=5))  # fmt: skip


def write(path, *records) -> None:
    writer = TrajectoryWriter(path)
    for record in records:
        writer.write(record)
    writer.close()


def test_a_line_cut_by_a_kill_is_dropped_and_the_rest_loads(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, header(), turn(1, "a\n</think>\n<tool: bash>\nls\n</tool>", "x"))
    with path.open("a") as fh:
        fh.write('{"type": "turn", "index": 2, "raw": "half a li')
    loaded = Trajectory.load(path)
    assert [t.index for t in loaded.turns] == [1] and loaded.result is None


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, header())
    with path.open("a") as fh:
        fh.write("not json\n")
    write_more = Result(exit_status=ExitStatus.SUBMITTED).model_dump_json()
    with path.open("a") as fh:
        fh.write(write_more + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl:2"):
        Trajectory.load(path)


def test_a_file_without_header_is_not_a_trajectory(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, Result(exit_status=ExitStatus.TURN_LIMIT))
    with pytest.raises(ValueError, match="no header"):
        Trajectory.load(path)


def test_messages_and_rebuild_give_the_prompts_the_model_saw(tmp_path):
    path = tmp_path / "t.jsonl"
    replies = [
        "one\n</think>\n<tool: bash>\nls\n</tool>",
        "two\n</think>\n<tool: bash>\nls\n</tool>",
        "done\n</think>\nbye",
    ]
    write(path, header(), turn(1, replies[0], "a"), turn(2, replies[1], "b  \n"), turn(3, replies[2], None))
    loaded = Trajectory.load(path)
    # The prompts as the loop builds them: only ever appended to.
    prompt = initial_prompt("SYSTEM", "Fix the bug.", True)
    prompts = [prompt]
    for t in loaded.turns[:2]:
        prompt += render_continuation(t.raw, [t.observation])
        prompts.append(prompt)
    assert rebuild_prompt(loaded) == prompts[-1]
    messages = loaded.messages()
    assert render_prompt(messages[:2]) == prompts[0]
    assert render_prompt(messages[:4]) == prompts[1]
    # The whole dialogue, last reply included (an open assistant message): the full token stream.
    assert render_prompt(messages) == prompts[2] + replies[2]
    assert loaded.turns[1].observation.content.endswith("b  \n\n</output>")  # tool output kept whole
