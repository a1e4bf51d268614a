"""The tools' logic without a sandbox: CWM's rules, text in, message or new file content out.

Where the copy of CWM's release is at ../shared/cwm-release, its own edit and create plugin scripts
are run on the same inputs (in a local Python, on files in a temporary directory) and must leave
the same file and say the same things (numbers, snippets, which error), modulo wording.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwm_agent.sandbox.base import RunResult, RunStatus
from cwm_agent.tools import TOOLS, ToolContext, run_tool
from cwm_agent.tools.base import as_plugin_input, parse_probe, probe_command, resolve_path
from cwm_agent.tools.bash import SESSION_ENDED, bash_result
from cwm_agent.tools.create import created_message, parse_create
from cwm_agent.tools.edit import FORMAT_HINT, EditError, apply_edit, parse_edit
from cwm_agent.tools.release import ReleaseError, load_release
from cwm_agent.tools.submit import REFUSALS, check_submission

RELEASE = Path(__file__).resolve().parents[1].parent / "shared" / "cwm-release"
needs_release = pytest.mark.skipif(
    not (RELEASE / "cwm/rl/swerl/tools.py").is_file(), reason=f"CWM's release is not at {RELEASE}"
)

FILE = "\n".join(f"line {i}" for i in range(1, 21)) + "\n"


def edit_body(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def edit_text(content: str, body: str) -> tuple[bool, str, str]:
    """What the edit tool does to a file's text (newlines as read by the plugin): ok, message, new text."""
    request = parse_edit(body)
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    try:
        outcome = apply_edit(content, request.search, request.replace, request.path)
    except EditError as error:
        return False, str(error), content
    return True, outcome.message, outcome.content


# ---------------------------------------------------------------- edit: parsing


def test_parse_edit_takes_the_line_before_the_block_as_path_and_ignores_the_rest():
    request = parse_edit("ignored\n  a.py \n<<<<<<< SEARCH\nx\ny\n=======\nz\n>>>>>>> REPLACE\ntrailing words")
    assert (request.path, request.search, request.replace) == ("  a.py ", "x\ny", "z")


def test_parse_edit_search_and_replacement_may_be_empty_lines():
    request = parse_edit("a.py\n<<<<<<< SEARCH\n\n=======\n\n>>>>>>> REPLACE")
    assert (request.search, request.replace) == ("", "")


def test_parse_edit_crlf_body_is_read_as_lf():
    request = parse_edit("a.py\r\n<<<<<<< SEARCH\r\nx\r\n=======\r\ny\r\n>>>>>>> REPLACE")
    assert (request.path, request.search, request.replace) == ("a.py", "x", "y")


@pytest.mark.parametrize(
    "body",
    [
        "a.py\nx = 1",
        "<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE",  # no path line
        "a.py\n<<<<<<< SEARCH\nx\n=======\ny",
        "a.py\n<<<<<<< SEARCH\nx\ny\n>>>>>>> REPLACE",
        "a.py\n<<<<<<< SEARCH \nx\n=======\ny\n>>>>>>> REPLACE",
    ],
)
def test_parse_edit_without_a_block_shows_the_form(body):
    with pytest.raises(EditError) as error:
        parse_edit(body)
    assert str(error.value) == FORMAT_HINT


def test_parse_edit_two_blocks_is_an_error_with_the_count():
    with pytest.raises(EditError, match="this one has 2"):
        parse_edit(edit_body("a", "x", "y") + "\n" + edit_body("b", "z", "w"))


# ---------------------------------------------------------------- edit: CWM's matching


def test_search_starts_at_a_line_start_and_may_end_mid_line():
    ok, message, new = edit_text("def f(a):\n    pass\n", edit_body("f.py", "def f(", "def g("))
    assert ok and new == "def g(a):\n    pass\n"
    assert "line 1" in message and "2 lines" not in message and "3 lines" in message  # "a\n" has 2 newlines+1


def test_prefix_of_another_line_is_ambiguous_and_names_the_lines():
    ok, message, new = edit_text("x = 1\ny = 2\nx = 10\n", edit_body("f.py", "x = 1", "x = 2"))
    assert not ok and new == "x = 1\ny = 2\nx = 10\n"
    assert "starting at lines 1, 3." in message


def test_search_in_the_middle_of_a_line_is_not_found():
    ok, message, _ = edit_text("a = x = 1\n", edit_body("f.py", "x = 1", "x = 2"))
    assert not ok and message.startswith("Nothing was replaced") and "indentation" in message


def test_not_found_hint_only_when_the_first_line_is_somewhere_in_the_file():
    ok, message, _ = edit_text("def f():\n    return 1\n", edit_body("f.py", "return 1\nmore", "x"))
    assert not ok and "indentation included" in message
    ok, message, _ = edit_text("def f():\n    return 1\n", edit_body("f.py", "nowhere", "x"))
    assert not ok and "indentation" not in message


def test_overlapping_occurrences_are_ambiguous():
    ok, message, _ = edit_text("a\na\na\n", edit_body("f.py", "a\na", "b"))
    assert not ok and "lines 1, 2" in message


def test_success_message_numbers_and_snippet_window():
    ok, message, new = edit_text(FILE, edit_body("f.py", "line 10\nline 11", "ten\nten and a half\neleven"))
    assert ok and new == FILE.replace("line 10\nline 11\n", "ten\nten and a half\neleven\n")
    # 21 lines and a final newline: 22 by CWM's count (newlines + 1).
    assert "line 10" in message and "22 lines" in message
    snippet = [line for line in message.splitlines() if re.match(r"^ {0,5}\d+\t", line)]
    # From 8 above the start to 8 + the replacement's newlines below it.
    assert snippet[0] == "     2\tline 2" and snippet[-1] == "    20\tline 19" and len(snippet) == 19
    assert "    10\tten\n    11\tten and a half\n    12\televen\n" in message


def test_crlf_file_comes_back_lf_and_missing_final_newline_stays_missing():
    ok, _, new = edit_text("a\r\nb\r\nc", edit_body("f.py", "c", "d"))
    assert ok and new == "a\nb\nd"


def test_empty_search_matches_a_one_line_file_only():
    ok, _, new = edit_text("abc", "f\n<<<<<<< SEARCH\n\n=======\nnew\n>>>>>>> REPLACE")
    assert ok and new == "newabc"
    ok, message, _ = edit_text("a\nb", "f\n<<<<<<< SEARCH\n\n=======\nnew\n>>>>>>> REPLACE")
    assert not ok and "lines 1, 2" in message


# ---------------------------------------------------------------- create


@pytest.mark.parametrize(
    "body, path, content",
    [
        ("p\nx", "p", "x"),
        ("p\nx\n", "p", "x\n"),
        ("p", "p", ""),
        ("p\n", "p", ""),
        ("p\n\n", "p", "\n"),
        ("p\r\na\r\nb", "p", "a\nb"),
        (" p \nx", " p ", "x"),
    ],
)
def test_create_writes_the_content_as_given(body, path, content):
    assert parse_create(body) == (path, content)


def test_created_message_counts_newlines_plus_one():
    assert created_message("a.py", "") == "Created a.py (1 lines)."
    assert created_message("a.py", "x\ny\n") == "Created a.py (3 lines)."


def test_as_plugin_input_is_the_heredocs_stdin_in_text_mode():
    assert as_plugin_input("a\r\nb\rc") == "a\nb\nc\n"


# ---------------------------------------------------------------- bash


def run_result(output: str, status: RunStatus) -> RunResult:
    return RunResult(
        output=output,
        exit_code=0 if status is RunStatus.OK else None,
        status=status,
        elapsed=0.5,
        restarted=status is not RunStatus.OK,
    )


def test_bash_output_is_exactly_what_the_command_printed():
    result = bash_result(run_result("file\n", RunStatus.OK))
    assert (result.output, result.ok, result.restarted) == ("file\n", True, False)


@pytest.mark.parametrize("status", [RunStatus.TIMEOUT, RunStatus.OUTPUT_TOO_LONG, RunStatus.SESSION_DIED])
def test_a_session_that_ended_shows_only_why(status):
    result = bash_result(run_result("partial output\n", status))
    assert result.output == SESSION_ENDED[status] and "partial" not in result.output
    assert not result.ok and result.restarted and result.timed_out == (status is RunStatus.TIMEOUT)
    assert "new session" in result.output and "default" in result.output


# ---------------------------------------------------------------- submit


@pytest.mark.parametrize(
    "text, kind, reason",
    [
        ("diff --git a/x b/x\n", "patch", None),
        ("", "patch", "empty"),
        (" \n\n", "patch", "empty"),
        ("--- a/x\n+++ b/x\n", "patch", "not_diff"),
        (" diff --git a/x b/x\n", "patch", "not_diff"),
        ("", "file", None),
        ("anything", "file", None),
    ],
)
def test_submit_checks_only_emptiness_and_the_diff_start(text, kind, reason):
    assert check_submission(text, kind) == reason


def test_submit_refusals_name_the_path():
    assert all("{path}" in message for message in REFUSALS.values())


# ---------------------------------------------------------------- path probe, run in a real local bash


def sh(command: str, cwd: Path) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def test_probe_reports_on_paths(tmp_path: Path):
    root = tmp_path
    (root / "a.py").write_text("x\n")
    (root / "sub").mkdir()
    (root / "a.py").chmod(0o755)
    (root / "link.py").symlink_to("a.py")
    (root / "dangling").symlink_to("nowhere/x")
    info = parse_probe(sh(probe_command("a.py"), root), "a.py")
    assert (info.path, info.exists, info.is_dir, info.parent_exists, info.mode) == (
        str(root / "a.py"),
        True,
        False,
        True,
        0o755,
    )
    info = parse_probe(sh(probe_command("sub"), root), "sub")
    assert info.exists and info.is_dir and info.mode is None
    info = parse_probe(sh(probe_command("nope/new.py"), root), "nope/new.py")
    assert not info.exists and not info.parent_exists and info.real_path is None
    # `..` is folded before the parent is looked at, as os.path.abspath does.
    info = parse_probe(sh(probe_command("nope/../new file.py"), root), "nope/../new file.py")
    assert info.path == str(root / "new file.py") and info.parent_exists and not info.exists
    info = parse_probe(sh(probe_command("a.py/x"), root), "a.py/x")
    assert info.parent_exists and not info.parent_is_dir
    info = parse_probe(sh(probe_command("link.py"), root), "link.py")
    assert info.real_path == str(root.resolve() / "a.py")
    assert not parse_probe(sh(probe_command("dangling"), root), "dangling").exists


def test_resolve_path():
    assert resolve_path("/testbed/src", "../x.py") == "/testbed/x.py"
    assert resolve_path("/testbed", "/tmp//p.diff") == "/tmp/p.diff"
    assert resolve_path("/", "a") == "/a"


# ---------------------------------------------------------------- registry


def test_unknown_tool_lists_the_available_ones():
    result = run_tool("python", "print(1)", ToolContext(sandbox=None))  # type: ignore[arg-type]
    assert not result.ok and "python" in result.output
    assert list(TOOLS) == ["bash", "edit", "create", "submit"]


# ---------------------------------------------------------------- reading CWM's release


@needs_release
def test_release_texts_and_plugin_command_are_read_from_the_checkout():
    release = load_release(RELEASE)
    assert set(release.bash_messages) == {"timeout", "output_too_long", "session_died"}
    assert all(message.count(".") >= 2 for message in release.bash_messages.values())
    assert set(release.submit_messages) == {"unreadable", "empty", "not_diff", "file_unreadable"}
    assert "p.diff" in release.submit_messages["empty"].render(path="p.diff")
    command = release.command_for("edit", "a.py\nx")
    assert command.startswith("${PYPLUGIN_PYTHON_PATH:-python3} /swerl-plugins/edit.py <<'")
    assert command.endswith(f"'\na.py\nx\n{release.eof}")
    assert (release.plugins_dir / "edit.py").is_file() and (release.plugins_dir / "create.py").is_file()


def copy_release(tmp_path: Path) -> Path:
    copy = tmp_path / "release"
    swerl = copy / "cwm/rl/swerl"
    (swerl / "plugins").mkdir(parents=True)
    for rel in ("tools.py", "default_configs.py", "plugins/edit.py", "plugins/create.py"):
        (swerl / rel).write_bytes((RELEASE / "cwm/rl/swerl" / rel).read_bytes())
    return copy


@needs_release
def test_release_missing_file_or_name_is_a_clear_error(tmp_path: Path):
    copy = copy_release(tmp_path)
    (copy / "cwm/rl/swerl/plugins/create.py").unlink()
    with pytest.raises(ReleaseError, match=r"plugins/create\.py does not exist"):
        load_release(copy)
    copy = copy_release(tmp_path / "2")
    tools = copy / "cwm/rl/swerl/tools.py"
    tools.write_text(tools.read_text().replace("def submit_diff_file(", "def submit_patch_file("))
    with pytest.raises(ReleaseError, match=r"tools\.py: no function `submit_diff_file`"):
        load_release(copy)
    with pytest.raises(ReleaseError, match="not a directory"):
        load_release(tmp_path / "absent")


# ---------------------------------------------------------------- the same inputs through CWM's plugins

DRIVER = r"""
import json, os, runpy, sys
plugin = runpy.run_path(sys.argv[1], run_name="cwm_plugin")
results = []
for case in json.load(sys.stdin):
    os.chdir(case["dir"])
    # The heredoc's final newline, read in text mode; create drops the final newline again.
    command = (case["body"] + "\n").replace("\r\n", "\n").replace("\r", "\n")
    if sys.argv[2] == "create":
        command = command[:-1]
    ok, message = plugin["main"](command)
    results.append([ok, message])
json.dump(results, sys.stdout)
"""


def run_release_plugin(name: str, cases: list[dict]) -> list[tuple[bool, str]]:
    """The release's plugin `name` on each case (a body and a directory), in one local Python, given
    the body as its stdin would read it."""
    script = RELEASE / f"cwm/rl/swerl/plugins/{name}.py"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(script), name],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
    )
    return [tuple(r) for r in json.loads(done.stdout)]


def not_wording(message: str) -> tuple[list[str], list[str]]:
    """What must agree between two messages that differ only in wording: the numbers in the prose
    and the numbered snippet lines."""
    snippet = [line for line in message.split("\n") if re.match(r"^ {0,5}\d+\t", line)]
    prose = "\n".join(line for line in message.split("\n") if line not in snippet)
    return re.findall(r"\d+", prose), snippet


EDIT_CASES = [
    ("x = 1\ny = 2\n", edit_body("f.py", "y = 2", "y = 3")),  # unique
    ("x = 1\nx = 10\n", edit_body("f.py", "x = 1", "x = 2")),  # ambiguous
    ("def f(a):\n    pass\n", edit_body("f.py", "def f(", "def g(")),  # ends mid-line
    ("def f():\n    return 1\n", edit_body("f.py", "return 1", "return 2")),  # hint
    ("def f():\n    return 1\n", edit_body("f.py", "nothing", "x")),  # no hint
    ("a\r\nb\r\nc\r\n", edit_body("f.py", "b", "B")),  # CRLF
    ("a\nb\nc", edit_body("f.py", "c", "C\nD")),  # no final newline
    (FILE, edit_body("f.py", "line 10\nline 11", "")),  # deletion, snippet window
    (FILE, edit_body("f.py", "line 1\nline 2", "one")),  # at the top
    ("a\na\na\n", edit_body("f.py", "a\na", "b")),  # overlapping
    ("abc", "f.py\n<<<<<<< SEARCH\n\n=======\nz\n>>>>>>> REPLACE"),  # empty search
    ("x\n", "f.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n" + edit_body("f.py", "x", "z")),  # 2 blocks
    ("x\n", "f.py\nx"),  # no block
]


def compare_edits(tmp_path: Path, cases: list[tuple[str, str]]) -> None:
    dirs = []
    for i, (content, _) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "f.py").write_bytes(content.encode())
        dirs.append(d)
    theirs = run_release_plugin("edit", [{"dir": str(d), "body": body} for d, (_, body) in zip(dirs, cases)])
    for d, (content, body), (their_ok, their_message) in zip(dirs, cases, theirs):
        try:
            ok, message, new = edit_text(content, body)
        except EditError as error:  # a parse error: the file is untouched
            ok, message, new = False, str(error), content.replace("\r\n", "\n").replace("\r", "\n")
        their_new = (d / "f.py").read_bytes().decode()
        if not their_ok:  # CWM writes only on success
            their_new = their_new.replace("\r\n", "\n").replace("\r", "\n")
        assert (ok, new) == (their_ok, their_new), (content, body)
        assert not_wording(message) == not_wording(their_message), (content, body, message, their_message)
        assert ("indentation" in message) == ("indentation" in their_message), (content, body)


@needs_release
def test_edit_agrees_with_cwms_plugin_on_chosen_cases(tmp_path: Path):
    compare_edits(tmp_path, EDIT_CASES)


TEXT = st.text(alphabet="ab \t\n\r=", max_size=24)


@needs_release
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(TEXT, TEXT, TEXT, st.booleans()), min_size=20, max_size=20))
def test_edit_agrees_with_cwms_plugin_on_random_cases(tmp_path_factory, cases):
    tmp_path = tmp_path_factory.mktemp("edit")
    built = []
    for content, search, replace, from_file in cases:
        if from_file and content:
            # Search for a piece of the file that starts at a line start, as a model would.
            lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            search = "\n".join(lines[len(search) % len(lines) :][: 1 + len(replace) % 3])
        built.append((content, edit_body("f.py", search, replace)))
    compare_edits(tmp_path, built)


@needs_release
def test_create_agrees_with_cwms_plugin(tmp_path: Path):
    bodies = ["new.py\nx", "new.py\nx\n", "new.py", "new.py\n\n", "new.py\r\na\r\n", "sub/new.py\nx", "exists.py\nx"]
    dirs = []
    for i in range(len(bodies)):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "exists.py").write_text("old")
        dirs.append(d)
    theirs = run_release_plugin("create", [{"dir": str(d), "body": body} for d, body in zip(dirs, bodies)])
    for d, body, (their_ok, their_message) in zip(dirs, bodies, theirs):
        path, content = parse_create(body)
        if their_ok:
            assert (d / path).read_bytes() == content.encode()
            assert not_wording(created_message(path, content)) == not_wording(their_message)
        else:
            assert path in ("sub/new.py", "exists.py")
