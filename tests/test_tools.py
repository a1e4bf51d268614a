"""The tools' logic without a sandbox: text in, message or new file content out.

The shell snippets the tools send to the sandbox (path probe, `git apply --check` on a
throwaway index) are run here in a real local bash against a real git repository.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cwm_agent.sandbox.base import RunResult, RunStatus
from cwm_agent.tools import TOOLS, ToolContext, run_tool
from cwm_agent.tools.base import parse_probe, probe_command, resolve_path
from cwm_agent.tools.bash import bash_output, bash_result
from cwm_agent.tools.create import created_message, parse_create
from cwm_agent.tools.edit import EditError, apply_edit, apply_request, parse_edit
from cwm_agent.tools.submit import (
    SubmitError,
    apply_check_command,
    check_patch_text,
    parse_submit_path,
    read_apply_check,
)

FILE = "\n".join(f"line {i}" for i in range(1, 21)) + "\n"


def edit_body(path: str, search: str, replace: str) -> str:
    """An edit call's body; an empty `replace` means no replacement lines at all."""
    replacement = f"{replace}\n" if replace else ""
    return f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replacement}>>>>>>> REPLACE"


def do_edit(data: str | bytes, search: str, replace: str, path: str = "f.py"):
    raw = data.encode() if isinstance(data, str) else data
    return apply_request(raw, parse_edit(edit_body(path, search, replace)))


# ---------------------------------------------------------------- edit: parsing


def test_parse_edit_reads_path_search_and_replacement():
    request = parse_edit(edit_body("  src/a.py  ", "x = 1\ny = 2", "x = 3"))
    assert request.path == "src/a.py"
    assert request.splits == [(["x = 1", "y = 2"], ["x = 3"])]


def test_parse_edit_empty_replacement_means_deletion():
    request = parse_edit("a.py\n<<<<<<< SEARCH\nx = 1\n=======\n>>>>>>> REPLACE")
    assert request.splits == [(["x = 1"], [])]
    # One blank replacement line is a blank line, as in CWM's own tool.
    request = parse_edit("a.py\n<<<<<<< SEARCH\nx = 1\n=======\n\n>>>>>>> REPLACE")
    assert request.splits == [(["x = 1"], [""])]
    assert apply_request(b"x = 1\ny\n", request).data == b"\ny\n"


@pytest.mark.parametrize(
    "body, phrase",
    [
        ("a.py\nx = 1", "No SEARCH/REPLACE block"),
        ("a.py", "No SEARCH/REPLACE block"),
        (
            edit_body("a.py", "a", "b") + "\n" + "<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE",
            "Only one SEARCH/REPLACE block",
        ),
        ("a.py\n<<<<<<< SEARCH\nx\n=======\ny", "no `>>>>>>> REPLACE` line"),
        ("a.py\n<<<<<<< SEARCH\nx\ny\n>>>>>>> REPLACE", "no `=======` line"),
        ("a.py\n<<<<<<< SEARCH\n=======\ny\n>>>>>>> REPLACE", "search part of the block is empty"),
        ("<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE", "first line of an edit call must be the path"),
        ("a.py\nb.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE", "Only the path may come before"),
        (edit_body("a.py", "x", "y") + "\nmore", "Nothing may follow"),
    ],
)
def test_parse_edit_errors_say_what_is_wrong(body, phrase):
    with pytest.raises(EditError) as error:
        parse_edit(body)
    assert phrase in str(error.value)


def test_parse_edit_forgives_blank_lines_around_the_block():
    request = parse_edit("a.py\n\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n\n")
    assert request.splits == [(["x"], ["y"])]


# ---------------------------------------------------------------- edit: applying


def test_edit_success_reports_line_count_and_numbered_snippet():
    outcome = do_edit(FILE, "line 10\nline 11", "line ten\nline ten and a half\nline eleven")
    assert outcome.data.decode() == FILE.replace("line 10\nline 11\n", "line ten\nline ten and a half\nline eleven\n")
    assert "was updated at line 10 and now has 21 lines" in outcome.message
    # 8 lines of context each side, numbered like `cat -n`.
    assert "     2\tline 2\n" in outcome.message
    assert "     1\tline 1" not in outcome.message
    assert "    10\tline ten\n    11\tline ten and a half\n    12\tline eleven\n" in outcome.message
    assert "    20\tline 19\n" in outcome.message
    assert "    21\tline 20" not in outcome.message
    assert "Review the change" in outcome.message


def test_edit_deletes_lines():
    outcome = do_edit(FILE, "line 3\nline 4", "")
    assert outcome.data.decode() == FILE.replace("line 3\nline 4\n", "")
    assert "now has 18 lines" in outcome.message
    assert "     2\tline 2\n     3\tline 5\n" in outcome.message


def test_edit_matches_whole_lines_only():
    # "line 1" is a prefix of "line 10".."line 19" but only line 1 equals it.
    outcome = do_edit(FILE, "line 1", "first")
    assert outcome.data.decode().startswith("first\nline 2\n")
    assert "line 10\n" in outcome.data.decode()
    with pytest.raises(EditError, match="do not appear verbatim"):
        do_edit(FILE, "line", "x")


def test_edit_not_found_names_the_line_with_other_indentation():
    text = "def f():\n    return 1\n\n\ndef g():\n    return 2\n"
    with pytest.raises(EditError) as error:
        do_edit(text, "return 2", "return 3")
    message = str(error.value)
    assert "No change was made" in message
    assert "line(s) 6" in message
    assert "indentation" in message


def test_edit_not_found_points_at_first_differing_line():
    text = "a = 1\nb = 2\nc = 3\n"
    with pytest.raises(EditError) as error:
        do_edit(text, "a = 1\nb = 2 \nc = 3", "z")
    message = str(error.value)
    assert "Search lines 1-1 match lines 1-1" in message
    assert "search line 2 differs from file line 2 only in whitespace" in message
    assert "     2\tb = 2" in message


def test_edit_found_several_times_gives_line_numbers():
    text = "x = 1\ny = 2\nx = 1\nz\nx = 1\n"
    with pytest.raises(EditError) as error:
        do_edit(text, "x = 1", "x = 2")
    assert "appear 3 times" in str(error.value)
    assert "lines 1, 3, 5" in str(error.value)


def test_edit_keeps_crlf_line_endings():
    outcome = do_edit(b"a\r\nb\r\nc\r\n", "b", "B1\nB2")
    assert outcome.data == b"a\r\nB1\r\nB2\r\nc\r\n"
    assert "\r" not in outcome.message


def test_edit_keeps_missing_final_newline():
    outcome = do_edit(b"a\nb\nc", "c", "C")
    assert outcome.data == b"a\nb\nC"
    outcome = do_edit(b"a\nb\nc", "b", "B")
    assert outcome.data == b"a\nB\nc"
    outcome = do_edit(b"a\nb\nc", "b\nc", "")
    assert outcome.data == b"a"
    outcome = do_edit(b"a\nb\n", "a\nb", "")
    assert outcome.data == b""
    assert "now has 0 lines" in outcome.message


def test_edit_keeps_bytes_that_are_not_utf8():
    data = b"# caf\xe9\nx = 1\n"
    outcome = do_edit(data, "x = 1", "x = 2")
    assert outcome.data == b"# caf\xe9\nx = 2\n"
    assert "\ufffd" in outcome.message  # shown to the model as a replacement character


def test_edit_refuses_binary_files():
    with pytest.raises(EditError, match="binary"):
        do_edit(b"\x00\x01x\n", "x", "y")


def test_edit_identical_replacement_says_unchanged():
    outcome = do_edit(FILE, "line 2", "line 2")
    assert not outcome.changed
    assert "unchanged" in outcome.message


def test_edit_divider_inside_search_is_resolved_by_the_file():
    rst = "Title\n=======\n\nBody text.\n"
    body = "doc.rst\n<<<<<<< SEARCH\nTitle\n=======\n=======\nNew title\n=======\n>>>>>>> REPLACE"
    outcome = apply_request(rst.encode(), parse_edit(body))
    assert outcome.data.decode() == "New title\n=======\n\nBody text.\n"


def test_apply_edit_empty_file():
    with pytest.raises(EditError, match="do not appear"):
        apply_edit(b"", ["x"], ["y"], "e.py")


# ---------------------------------------------------------------- create


def test_create_content_gets_a_final_newline():
    assert parse_create("a.py\nprint(1)") == ("a.py", "print(1)\n")
    assert parse_create("a.py\nx\n") == ("a.py", "x\n")
    assert parse_create("a.py\nx\n\n") == ("a.py", "x\n\n")
    assert parse_create(" pkg/__init__.py ") == ("pkg/__init__.py", "")


def test_created_message_counts_lines():
    assert created_message("t.py", "a\nb\n") == "The file t.py was created (2 lines)."
    assert created_message("t.py", "a\n") == "The file t.py was created (1 line)."
    assert created_message("t.py", "") == "The file t.py was created (0 lines)."


# ---------------------------------------------------------------- bash


def run_result(output: str, status: RunStatus, restarted: bool = False) -> RunResult:
    return RunResult(
        output=output, exit_code=0 if status is RunStatus.OK else None, status=status, elapsed=0.5, restarted=restarted
    )


def test_bash_drops_one_trailing_newline_and_shows_no_exit_code():
    result = bash_result(run_result("a\nb\n", RunStatus.OK), 120, "/testbed")
    assert result.output == "a\nb"
    assert result.ok and not result.timed_out and not result.restarted
    assert result.elapsed == 0.5


def test_bash_timeout_says_session_restarted_in_default_directory():
    result = bash_result(run_result("partial\n", RunStatus.TIMEOUT, restarted=True), 120, "/testbed")
    assert result.output.startswith("partial\n\n")
    assert "did not finish within 120 seconds" in result.output
    assert "fresh session has started in the default working directory (/testbed)" in result.output
    assert result.timed_out and result.restarted and not result.ok


def test_bash_timeout_without_restart_says_session_kept():
    output = bash_output(run_result("", RunStatus.TIMEOUT, restarted=False), 2.5, "/testbed")
    assert output.startswith("The command did not finish within 2.5 seconds")
    assert "session is still the same" in output


def test_bash_dead_session_is_reported():
    result = bash_result(run_result("bye\n", RunStatus.SESSION_DIED, restarted=True), 120, "/w")
    assert result.output.startswith("bye\n\nThe session ended during this command")
    assert "(/w)" in result.output
    assert result.restarted and not result.ok


def test_bash_truncated_output_keeps_the_marker():
    text = "head\n[... 5000 bytes cut ...]\ntail\n"
    result = bash_result(run_result(text, RunStatus.OUTPUT_TRUNCATED), 120, "/testbed")
    assert result.output == text[:-1]
    assert result.ok


# ---------------------------------------------------------------- submit


def test_submit_path_parsing():
    assert parse_submit_path("  /tmp/p.diff \n") == "/tmp/p.diff"
    with pytest.raises(SubmitError, match="not the patch itself"):
        parse_submit_path("diff --git a/x b/x\n--- a/x\n+++ b/x\n")
    with pytest.raises(SubmitError, match="single line"):
        parse_submit_path("a.diff\nb.diff")


@pytest.mark.parametrize(
    "text, phrase",
    [("", "the file is empty"), ("  \n", "the file is empty"), ("--- a/x\n+++ b/x\n", "not a git diff")],
)
def test_submit_text_checks(text, phrase):
    with pytest.raises(SubmitError, match=phrase):
        check_patch_text(text, "/tmp/p.diff")


def test_submit_accepts_a_diff():
    check_patch_text("diff --git a/x b/x\n", "p.diff")


# ---------------------------------------------------------------- shell snippets, run in a real local bash


def sh(command: str, cwd: Path) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "a.py").write_text("x = 1\ny = 2\n")
    git(root, "add", "a.py")
    git(root, "commit", "-qm", "base")
    return root


def test_probe_reports_on_paths(repo: Path):
    (repo / "sub").mkdir()
    os.chmod(repo / "a.py", 0o755)
    os.symlink("a.py", repo / "link.py")
    info = parse_probe(sh(probe_command("a.py"), repo), "a.py")
    assert (info.path, info.exists, info.is_dir, info.parent_is_dir, info.mode) == (
        str(repo / "a.py"),
        True,
        False,
        True,
        0o755,
    )
    info = parse_probe(sh(probe_command("sub"), repo), "sub")
    assert info.exists and info.is_dir and info.mode is None
    info = parse_probe(sh(probe_command("nope/new.py"), repo), "nope/new.py")
    assert not info.exists and not info.parent_is_dir and info.real_path is None
    info = parse_probe(sh(probe_command("sub/../new file.py"), repo), "sub/../new file.py")
    assert info.path == str(repo / "new file.py") and info.parent_is_dir and not info.exists
    info = parse_probe(sh(probe_command("link.py"), repo), "link.py")
    assert info.path == str(repo / "link.py") and info.real_path == str(repo.resolve() / "a.py")


def test_resolve_path():
    assert resolve_path("/testbed/src", "../x.py") == "/testbed/x.py"
    assert resolve_path("/testbed", "/tmp//p.diff") == "/tmp/p.diff"
    assert resolve_path("/", "a") == "/a"


def test_apply_check_accepts_a_patch_for_the_base_and_leaves_the_tree_alone(repo: Path, tmp_path: Path):
    base = git(repo, "rev-parse", "HEAD").strip()
    (repo / "a.py").write_text("x = 1\ny = 3\n")
    patch = tmp_path / "p.diff"
    patch.write_text(git(repo, "diff"))
    # The working tree moves on after the patch was made; the check is against the base commit.
    (repo / "a.py").write_text("totally different\n")
    out = sh(apply_check_command(str(repo), base, str(patch)), tmp_path)
    read_apply_check(out, "p.diff", str(repo), base)
    assert (repo / "a.py").read_text() == "totally different\n"
    assert git(repo, "status", "--porcelain") == " M a.py\n"


def test_apply_check_rejects_a_patch_for_another_base_with_gits_reason(repo: Path, tmp_path: Path):
    base = git(repo, "rev-parse", "HEAD").strip()
    (repo / "a.py").write_text("x = 1\ny = 2\nz = 3\n")
    git(repo, "commit", "-qam", "moved on")
    (repo / "a.py").write_text("x = 1\ny = 2\nz = 4\n")
    patch = tmp_path / "p.diff"
    patch.write_text(git(repo, "diff"))
    out = sh(apply_check_command(str(repo), base, str(patch)), tmp_path)
    with pytest.raises(SubmitError) as error:
        read_apply_check(out, "p.diff", str(repo), base)
    message = str(error.value)
    assert "does not apply to the original code" in message
    assert "patch does not apply" in message  # git's own words
    assert base[:12] in message


def test_apply_check_unreadable_base(repo: Path, tmp_path: Path):
    patch = tmp_path / "p.diff"
    patch.write_text("diff --git a/a.py b/a.py\n")
    out = sh(apply_check_command(str(repo), "0" * 40, str(patch)), tmp_path)
    with pytest.raises(SubmitError, match="could not be read"):
        read_apply_check(out, "p.diff", str(repo), "0" * 40)


# ---------------------------------------------------------------- registry


def test_unknown_tool_lists_the_available_ones():
    result = run_tool("python", "print(1)", ToolContext(sandbox=None))  # type: ignore[arg-type]
    assert not result.ok
    assert "no tool named 'python'" in result.output
    assert "bash, edit, create, submit" in result.output
    assert list(TOOLS) == ["bash", "edit", "create", "submit"]


# ---------------------------------------------------------------- edit: property


from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LINE = st.text(alphabet="ab =\t", max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(LINE, min_size=1, max_size=8),
    span=st.tuples(st.integers(0, 7), st.integers(1, 3)),
    replacement=st.lists(LINE, max_size=3),
    eol=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_edit_replaces_exactly_the_searched_lines(lines, span, replacement, eol, final_newline):
    start = min(span[0], len(lines) - 1)
    search = lines[start : start + span[1]]
    data = (eol.join(lines) + (eol if final_newline else "")).encode()
    occurrences = sum(lines[i : i + len(search)] == search for i in range(len(lines) - len(search) + 1))
    # Without a final newline, an empty last line is no line at all ("a\n" is one line).
    assume(occurrences == 1 and (final_newline or lines[-1] != ""))
    outcome = apply_edit(data, search, replacement, "f")
    new_lines = lines[:start] + replacement + lines[start + len(search) :]
    assume(final_newline or not new_lines or new_lines[-1] != "")
    # A file with no line ending at all gives none to follow: new lines get "\n".
    file_eol = eol if final_newline or len(lines) > 1 else "\n"
    expected = file_eol.join(new_lines) + (file_eol if final_newline and new_lines else "")
    assert outcome.data.decode() == expected
    assert outcome.num_lines == (len(new_lines) if expected else 0)
    assert outcome.line == start + 1
