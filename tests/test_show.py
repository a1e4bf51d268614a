"""`cwm-agent show`: a trajectory as a person reads it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
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


def test_a_format_error_turn_shows_what_the_model_wrote_and_the_error_once(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path)
    proc = show(str(path))
    assert proc.returncode == 0, proc.stderr
    assert "reply (not a valid call)" in proc.stdout and "oops" in proc.stdout
    assert proc.stdout.count("MissingThinkEnd: close your thinking") == 1


def test_long_lines_are_cut_with_a_marker(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TrajectoryWriter(path)
    writer.write(Header(run_id="r1", started_at=0.0, versions={}, task={"task_id": "wide"}, config={}, reasoning=True,
                        system_prompt="S", user_prompt="x" * 1000))  # fmt: skip
    writer.close()
    proc = show(str(path), "--width", "100")
    assert proc.returncode == 0, proc.stderr
    assert "⟨… +900 chars⟩" in proc.stdout
    assert "more chars" not in show(str(path), "--full").stdout and "⟨…" not in show(str(path), "--full").stdout


def test_color_always_survives_a_pipe_and_no_color_never_colours(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path)
    always = show(str(path), "--color", "always")  # stdout is a pipe, and NO_COLOR=1 is set
    assert always.returncode == 0 and "\x1b[" in always.stdout
    never = show(str(path), "--color", "never")
    assert never.returncode == 0 and "\x1b[" not in never.stdout
    bad = show(str(path), "--color", "sometimes")
    assert bad.returncode == 2 and "--color sometimes" in bad.stderr


def test_list_has_one_row_per_turn(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path)
    proc = show(str(path), "--list")
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == 2
    assert "bash" in rows[0] and "seq 100" in rows[0] and "1.5" in rows[0] and "100" in rows[0]
    assert "format error" in rows[1] and "MissingThinkEnd" in rows[1]
    assert "turn_limit · 2 turns" in proc.stdout


def test_folders_solve_output_and_a_folder_without_a_trajectory(tmp_path):
    solve_dir = tmp_path / "solve-1"
    solve_dir.mkdir()
    write_trajectory(solve_dir / "trajectory.jsonl")
    # demo writes its evaluation beside: DIR/eval/<instance_id>/result.json + report.json
    (solve_dir / "eval" / "demo-1").mkdir(parents=True)
    (solve_dir / "eval" / "demo-1" / "result.json").write_text('{"instance_id": "demo-1", "outcome": "unresolved"}')
    (solve_dir / "eval" / "demo-1" / "report.json").write_text(
        '{"demo-1": {"patch_successfully_applied": true, "resolved": false, "tests_status": '
        '{"FAIL_TO_PASS": {"success": [], "failure": ["test_calc.py::test_add"]}, '
        '"PASS_TO_PASS": {"success": ["test_calc.py::test_sub"], "failure": []}}}}'
    )
    proc = show(str(solve_dir))
    assert proc.returncode == 0, proc.stderr
    assert "Fix the bug in calc.py" in proc.stdout
    assert "evaluation: unresolved" in proc.stdout and "failed: test_calc.py::test_add" in proc.stdout
    assert "PASS_TO_PASS: 1 passed, 0 failed" in proc.stdout
    empty = tmp_path / "demo"
    empty.mkdir()
    proc = show(str(empty))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "holds no trajectory.jsonl" in proc.stderr
    assert show(str(tmp_path / "nowhere")).stderr.count("\n") == 1


def test_follow_prints_turns_as_they_are_written_until_the_result(tmp_path):
    path = tmp_path / "t.jsonl"
    full = tmp_path / "full.jsonl"
    write_trajectory(full)
    records = full.read_text().splitlines(keepends=True)
    path.write_text(records[0])  # the header only: the episode has just started
    proc = subprocess.Popen([sys.executable, "-m", "cwm_agent.cli", "show", str(path), "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"COLUMNS": "120", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip

    def append_slowly() -> None:
        for record in records[1:]:
            time.sleep(0.6)
            with path.open("a") as fh:  # a record arrives in two writes, as a slow flush would make it
                half = len(record) // 2
                fh.write(record[:half])
                fh.flush()
                time.sleep(0.3)
                fh.write(record[half:])

    writer = threading.Thread(target=append_slowly)
    writer.start()
    out, err = proc.communicate(timeout=30)
    writer.join()
    assert proc.returncode == 0, err
    assert "Fix the bug in calc.py" in out and "turn 1 ·" in out and "turn 2 ·" in out
    assert "turn_limit" in out and "+    return a + b" in out
    assert "Ctrl-C stops" in err


def test_follow_stops_cleanly_on_ctrl_c(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path, finished=False)
    proc = subprocess.Popen([sys.executable, "-m", "cwm_agent.cli", "show", str(path), "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"COLUMNS": "120", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    first = proc.stderr.readline()  # said once the file's records are printed and it waits for more
    assert "Ctrl-C stops" in first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "turn 2 ·" in out and "stopped following" in err and "Traceback" not in err


def test_text_in_brackets_prints_as_written(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TrajectoryWriter(path)
    writer.write(Header(run_id="r1", started_at=0.0, versions={}, task={"task_id": "[bold]id[/bold]"}, config={},
                        reasoning=True, system_prompt="S", user_prompt="P"))  # fmt: skip
    writer.write(Turn(index=1, raw="x\n</think>\n<tool: bash>\necho [red]hi[/red]\n</tool>",
                      action=Action(tool="bash", body="echo [red]hi[/red]"), tool_ok=True))  # fmt: skip
    writer.close()
    for args in ((), ("--list",)):
        proc = show(str(path), *args)
        assert proc.returncode == 0, proc.stderr
        assert "echo [red]hi[/red]" in proc.stdout and "[bold]id[/bold]" in proc.stdout


def test_follow_a_trajectory_written_again_from_its_start(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trajectory(path, finished=False)
    full = tmp_path / "full.jsonl"
    write_trajectory(full)
    proc = subprocess.Popen([sys.executable, "-m", "cwm_agent.cli", "show", str(path), "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"COLUMNS": "120", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "Ctrl-C stops" in proc.stderr.readline()  # it has read the two turns
    records = full.read_text().splitlines(keepends=True)
    path.write_text(records[0])  # a resumed run starts the episode again
    time.sleep(1.0)
    with path.open("a") as fh:
        fh.writelines(records[1:])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "the trajectory was started again" in out and "turn_limit" in out
    assert out.count("Fix the bug in calc.py") == 2


def ended_without_a_call(path: Path, graded: bool) -> None:
    """An episode whose last reply called no tool: after a submission (graded) or at the turn limit."""
    writer = TrajectoryWriter(path)
    writer.write(Header(run_id="r1", started_at=0.0, versions={}, task={"task_id": "t-1"}, config={},
                        reasoning=True, system_prompt="S", user_prompt="Fix it"))  # fmt: skip
    writer.write(Turn(index=1, raw="send it\n</think>\n<tool: submit>\nfix.diff\n</tool>", thinking="send it",
                      action=Action(tool="submit", body="fix.diff"), tool_ok=True,
                      observation=Message(role="tool: submit", content="accepted")))  # fmt: skip
    writer.write(Turn(index=2, raw="done\n</think>\nThe off-by-one in calc.py is fixed.", thinking="done",
                      format_error="FormatError: no tool call"))  # fmt: skip
    status = ExitStatus.SUBMITTED if graded else ExitStatus.TURN_LIMIT
    writer.write(Result(exit_status=status, graded=graded, submission="diff --git a/calc.py b/calc.py\n", turns=2))
    writer.close()


def test_follow_shows_a_reply_that_ends_a_graded_episode_as_the_final_reply(tmp_path):
    for graded in (True, False):
        path = tmp_path / f"graded-{graded}.jsonl"
        ended_without_a_call(path, graded)
        for args in ((), ("--follow",)):  # following it agrees with showing it once it is written
            proc = show(str(path), *args)
            assert proc.returncode == 0, proc.stderr
            assert "The off-by-one in calc.py is fixed." in proc.stdout
            assert ("final reply (ends the episode" in proc.stdout) is graded, (graded, args, proc.stdout)
            assert ("not a valid call" in proc.stdout) is not graded, (graded, args, proc.stdout)
