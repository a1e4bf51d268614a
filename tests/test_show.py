"""`cwm-agent show`: a trajectory as a person reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cwm_agent.agent.trajectory import Action, ExitStatus, Header, Result, TokenCounts, TrajectoryWriter, Turn
from cwm_agent.prompts.render import Message


def write_trajectory(path: Path, finished: bool = True) -> None:
    writer = TrajectoryWriter(path)
    writer.write(Header(run_id="r1", started_at=0.0, versions={"model": "cwm"}, task={"task_id": "demo-1"}, config={},
                        reasoning=True, system_prompt="SYSTEM", user_prompt="Fix the bug in calc.py"))  # fmt: skip
    listing = "\n".join(f"line {i}" for i in range(100))
    budget = "<budget>\n* Remaining turns: 9\n</budget>"
    writer.write(Turn(index=1, raw="look\n</think>\n<tool: bash>\nseq 100\n</tool>", thinking="I should look first",
                      action=Action(tool="bash", body="seq 100"), tool_ok=True,
                      observation=Message(role="tool: bash", content=f"<output>\n{listing}\n</output>\n\n{budget}"),
                      tokens=TokenCounts(prompt=100, completion=20, cached=64), model_seconds=1.5,
                      tool_seconds=0.25))  # fmt: skip
    writer.write(Turn(index=2, raw="oops", format_error="MissingThinkEnd: close your thinking",
                      observation=Message(role="user", content="MissingThinkEnd: close your thinking")))  # fmt: skip
    if finished:
        diff = "diff --git a/calc.py b/calc.py\n-    return a - b\n+    return a + b\n"
        writer.write(Result(exit_status=ExitStatus.TURN_LIMIT, detail="reached the limit of 2 turns", turns=2,
                            final_diff=diff))  # fmt: skip
    writer.close()


def show(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cwm_agent.cli", "show", *args], capture_output=True, text=True,
                          env={"COLUMNS": "120", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_show_prints_each_turn_with_its_tokens_tool_and_observation(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path)
    proc = show(str(path), "--lines", "10")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "demo-1" in out and "Fix the bug in calc.py" in out
    assert "turn 1 · model 1.5s · tool 0.2s · 100 prompt + 20 generated tokens, 64 cached" in out
    assert "I should look first" in out and "<tool: bash>" in out and "seq 100" in out
    # A long observation keeps its head and its tail (the budget block), with the cut said.
    assert "line 0" in out and "more lines: --full shows all" in out and "Remaining turns: 9" in out
    assert "line 50" not in out
    assert "MissingThinkEnd: close your thinking" in out
    assert "turn_limit" in out and "working tree diff (nothing submitted)" in out and "+    return a + b" in out


def test_show_full_one_turn_without_thinking(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path)
    proc = show(str(path), "--turn", "1", "--full", "--no-thinking")
    assert proc.returncode == 0, proc.stderr
    assert "line 50" in proc.stdout and "more lines" not in proc.stdout
    assert "I should look first" not in proc.stdout and "turn 2" not in proc.stdout and "Fix the bug" not in proc.stdout


def test_show_partial_trajectory_and_mistakes(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path, finished=False)
    proc = show(str(path))
    assert proc.returncode == 0 and "no result record" in proc.stdout
    missing = show(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    no_turn = show(str(path), "--turn", "7")
    assert no_turn.returncode == 2 and "has no turn 7" in no_turn.stderr
    (tmp_path / "junk.jsonl").write_text("hello\nworld\n")
    junk = show(str(tmp_path / "junk.jsonl"))
    assert junk.returncode == 2 and "Traceback" not in junk.stderr
