"""Bad inputs to solve, demo and eval are one line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cwm_agent.model.scripted_server import ScriptedServer


def cwm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cwm_agent.cli", *args], capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert words in proc.stderr, proc.stderr


@pytest.mark.docker
def test_solve_on_a_repository_without_commits(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.py").write_text("x = 1\n")
    with ScriptedServer(["never used"]) as server:
        proc = cwm(
            "solve", "--repo", str(repo), "--issue", "Fix a.", "--model-url", server.url, "-o", str(tmp_path / "o")
        )
    one_line_error(proc, "has no commits yet")


def test_solve_with_an_issue_file_that_is_not_utf8(tmp_path):
    issue = tmp_path / "issue.md"
    issue.write_bytes(b"caf\xe9 is broken\n")
    proc = cwm("solve", "--repo", str(tmp_path), "--issue", f"@{issue}", "-o", str(tmp_path / "o"))
    one_line_error(proc, "is not UTF-8 text (byte 0xe9 at offset 3)")


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_demo_output_that_cannot_be_written(tmp_path, where):
    a_file = tmp_path / "f"
    a_file.write_text("keep\n")
    proc = cwm("demo", "-o", str(a_file if where == "file" else a_file / "sub"))
    one_line_error(proc, str(a_file))
    assert a_file.read_text() == "keep\n"
