"""The tools through a real DockerSandbox on the base image: one container for the module.

Each test works in its own directory (or its own repository) so the order does not matter;
the shared session's current directory is reset by the `ctx` fixture. Where the copy of CWM's
release is at ../shared/cwm-release, its own edit and create plugins run in the same container
(as `--cwm-release` runs them) beside ours, on the same inputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cwm_agent.sandbox.base import SandboxConfig
from cwm_agent.tools import ToolContext, run_tool
from cwm_agent.tools.bash import SESSION_ENDED, RunStatus

pytestmark = pytest.mark.docker

REPO = "/testbed"
RELEASE = Path(__file__).resolve().parents[1].parent / "shared" / "cwm-release"
needs_release = pytest.mark.skipif(
    not (RELEASE / "cwm/rl/swerl/tools.py").is_file(), reason=f"CWM's release is not at {RELEASE}"
)
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"


@pytest.fixture(scope="module")
def sandbox(docker_client):
    from cwm_agent.sandbox.docker import DockerSandbox
    from cwm_agent.sandbox.images import BASE_IMAGE

    with DockerSandbox(SandboxConfig(image=BASE_IMAGE, command_timeout=30), client=docker_client) as box:
        box.start()
        setup = box.run(
            f"cd {REPO} && git init -q && printf '%s' {sh_quote(CALC)} > calc.py && mkdir -p docs && "
            "echo hello > docs/readme.txt && git add -A && git commit -qm base && git rev-parse HEAD"
        )
        assert setup.exit_code == 0, setup.output
        box.base_commit = setup.output.strip().splitlines()[-1]  # type: ignore[attr-defined]
        yield box


def sh_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@pytest.fixture
def ctx(sandbox) -> ToolContext:
    sandbox.run(f"cd {REPO}")
    return ToolContext(sandbox=sandbox, repo_dir=REPO, base_commit=sandbox.base_commit, command_timeout=30)


def bash(ctx: ToolContext, command: str) -> str:
    result = run_tool("bash", command, ctx)
    assert result.ok, result.output
    return result.output


def edit_body(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


# ---------------------------------------------------------------- bash


def test_bash_output_is_exact_and_merged(ctx):
    assert bash(ctx, "mkdir -p /tmp/b1 && cd /tmp/b1 && X=42 && touch file") == ""
    assert bash(ctx, "ls") == "file\n"  # the final newline is kept
    assert bash(ctx, "printf x") == "x"
    assert bash(ctx, 'echo "$PWD $X"; echo err >&2; false') == "/tmp/b1 42\nerr\n"  # no exit code


def test_timeout_ends_the_session_drops_the_output_and_the_rest_of_the_line(ctx):
    bash(ctx, "rm -f /tmp/never; cd /tmp; export KEPT=1")
    ctx.command_timeout = 1
    result = run_tool("bash", "echo a; sleep 3; touch /tmp/never", ctx)
    assert (result.output, result.ok, result.timed_out, result.restarted) == (
        SESSION_ENDED[RunStatus.TIMEOUT],
        False,
        True,
        True,
    )
    ctx.command_timeout = 30
    assert bash(ctx, "sleep 3; pwd; echo [$KEPT]; ls /tmp/never 2>/dev/null | wc -l") == f"{REPO}\n[]\n0\n"


@pytest.mark.parametrize("command", ["cd /tmp && echo bye && exit 3", "exec true", "kill -9 $$"])
def test_a_dead_shell_shows_only_that_a_fresh_session_started(ctx, command):
    result = run_tool("bash", command, ctx)
    assert (result.output, result.ok, result.restarted) == (SESSION_ENDED[RunStatus.SESSION_DIED], False, True)
    assert bash(ctx, "pwd") == f"{REPO}\n"


def test_too_much_output_ends_the_session(ctx):
    bash(ctx, "cd /tmp")
    whole = run_tool("bash", f"head -c {480 * 1024 - 9} /dev/zero | tr '\\0' x", ctx)
    assert whole.ok and whole.output == "x" * (480 * 1024 - 9)  # no head+tail cut
    result = run_tool("bash", "seq 1 1000000", ctx)
    assert (result.output, result.ok, result.restarted) == (SESSION_ENDED[RunStatus.OUTPUT_TOO_LONG], False, True)
    assert bash(ctx, "pwd") == f"{REPO}\n"


# ---------------------------------------------------------------- edit


def test_edit_keeps_mode_resolves_relative_paths_and_reports_like_cwm(ctx):
    bash(
        ctx,
        "mkdir -p /tmp/e1/pkg && printf 'import os\\n\\nprint(1)\\nprint(2)\\n' > /tmp/e1/pkg/run.py "
        "&& chmod 755 /tmp/e1/pkg/run.py && cd /tmp/e1",
    )
    result = run_tool("edit", edit_body("pkg/run.py", "print(2)", "print(3)\nprint(4)"), ctx)
    assert result.ok, result.output
    assert "line 4" in result.output and "6 lines" in result.output and result.output.endswith("\n")
    assert "     4\tprint(3)\n     5\tprint(4)\n     6\t\n" in result.output
    assert bash(ctx, "cat pkg/run.py; stat -c %a pkg/run.py") == "import os\n\nprint(1)\nprint(3)\nprint(4)\n755\n"
    assert bash(ctx, "pwd") == "/tmp/e1\n"  # the tool's own probe leaves the session alone


def test_edit_errors(ctx):
    bash(ctx, "mkdir -p /tmp/e2 && cd /tmp/e2 && printf 'x = 1\\nx = 10\\n    y = 2\\n' > f.py")
    missing = run_tool("edit", edit_body("nope.py", "a", "b"), ctx)
    assert not missing.ok and "nope.py does not exist" in missing.output
    directory = run_tool("edit", edit_body("/tmp", "a", "b"), ctx)
    assert not directory.ok and "is a directory" in directory.output
    twice = run_tool("edit", edit_body("f.py", "x = 1", "x = 2"), ctx)
    assert not twice.ok and "lines 1, 2." in twice.output
    indent = run_tool("edit", edit_body("f.py", "y = 2\nz", "y = 3"), ctx)
    assert not indent.ok and "indentation" in indent.output
    bash(ctx, "printf '\\xff\\n' > latin.txt")
    latin = run_tool("edit", edit_body("latin.txt", "a", "b"), ctx)
    assert not latin.ok and "not UTF-8" in latin.output
    assert bash(ctx, "cat f.py") == "x = 1\nx = 10\n    y = 2\n"  # nothing written on failure


def test_edit_follows_symlinks_and_rewrites_crlf_as_lf(ctx):
    bash(ctx, "mkdir -p /tmp/e3 && cd /tmp/e3 && printf 'old\\r\\nkeep\\r\\n' > target.txt && ln -s target.txt link")
    result = run_tool("edit", edit_body("link", "old", "new"), ctx)
    assert result.ok, result.output
    assert bash(ctx, "test -L link") == ""
    assert ctx.sandbox.read_file("/tmp/e3/target.txt") == b"new\nkeep\n"


# ---------------------------------------------------------------- create


def test_create_writes_the_content_exactly_relative_to_cwd(ctx):
    bash(ctx, "mkdir -p /tmp/c1/sub && cd /tmp/c1/sub")
    result = run_tool("create", "../made.py\ndef f():\n    return 1", ctx)
    assert result.ok, result.output
    assert "../made.py" in result.output and "(2 lines)" in result.output and result.output.endswith("\n")
    assert bash(ctx, "cat -A /tmp/c1/made.py; echo; stat -c %a /tmp/c1/made.py") == "def f():$\n    return 1\n644\n"
    assert run_tool("create", "empty.py", ctx).ok
    assert bash(ctx, "stat -c %s empty.py") == "0\n"


def test_create_errors(ctx):
    bash(ctx, "mkdir -p /tmp/c2 && cd /tmp/c2 && echo keep > here.txt")
    exists = run_tool("create", "here.txt\nnew", ctx)
    assert not exists.ok and "here.txt exists already" in exists.output
    assert bash(ctx, "cat here.txt") == "keep\n"
    no_parent = run_tool("create", "a/b/c.py\nx = 1", ctx)
    assert not no_parent.ok and "/tmp/c2/a/b does not exist" in no_parent.output
    not_dir = run_tool("create", "here.txt/c.py\nx = 1", ctx)
    assert not not_dir.ok and "not a directory" in not_dir.output
    assert bash(ctx, "ls") == "here.txt\n"


# ---------------------------------------------------------------- submit


def test_submit_reads_through_the_session_and_returns_the_patch(ctx):
    fix = run_tool("edit", edit_body("calc.py", "    return a - b", "    return a + b"), ctx)
    assert fix.ok, fix.output
    bash(ctx, "git diff > /tmp/p.diff")
    patch = bash(ctx, "cat /tmp/p.diff")
    result = run_tool("submit", "/tmp/p.diff", ctx)
    assert (result.ok, result.output, result.submission) == (True, patch, patch)
    assert patch.startswith("diff --git a/calc.py b/calc.py") and patch.endswith("\n")
    # The shell expands the path, relative to the session's directory.
    bash(ctx, "cd /tmp")
    assert run_tool("submit", "  $PWD/p.dif?  ", ctx).submission == patch
    # A patch that does not apply is not CWM's concern.
    bash(ctx, "printf 'diff --git a/none b/none\\n' > /tmp/bogus.diff")
    assert run_tool("submit", "/tmp/bogus.diff", ctx).ok
    bash(ctx, f"cd {REPO} && git checkout -q calc.py")


def test_submit_refusals(ctx):
    bash(ctx, "mkdir -p /tmp/s1 && cd /tmp/s1 && : > empty.diff && echo 'not a patch' > notes.diff")
    cases = {"missing.diff": "check that the file exists", "/tmp": "check that the file exists"}
    cases |= {"empty.diff": "is empty", "notes.diff": "not a diff"}
    for path, phrase in cases.items():
        result = run_tool("submit", path, ctx)
        assert not result.ok and result.submission is None
        assert path in result.output and phrase in result.output, (path, result.output)


def test_submit_file_kind_only_needs_the_read_to_succeed(ctx):
    ctx.sandbox.run("mkdir -p /tmp/t1 && : > /tmp/t1/e")
    ctx.sandbox.write_file("/tmp/t1/test_issue.py", b'print("Issue reproduced")\n')
    ctx.submit_kind = "file"
    result = run_tool("submit", "/tmp/t1/test_issue.py", ctx)
    assert result.ok and result.submission == result.output == 'print("Issue reproduced")\n'
    assert run_tool("submit", "/tmp/t1/e", ctx).submission == ""
    assert not run_tool("submit", "/tmp/t1/missing.py", ctx).ok


# ---------------------------------------------------------------- CWM's own plugins (--cwm-release)


def release_ctx(ctx: ToolContext) -> ToolContext:
    import dataclasses

    return dataclasses.replace(ctx, cwm_release=RELEASE)


def numbers_and_snippet(message: str) -> tuple[list[str], list[str]]:
    snippet = [line for line in message.split("\n") if re.match(r"^ {0,5}\d+\t", line)]
    prose = "\n".join(line for line in message.split("\n") if line not in snippet)
    return re.findall(r"\d+", prose), snippet


CASES = [
    ("x = 1\ny = 2\n", edit_body("f.py", "y = 2", "y = 3")),
    ("x = 1\nx = 10\n", edit_body("f.py", "x = 1", "x = 2")),
    ("def f(a):\n    pass\n", edit_body("f.py", "def f(", "def g(")),
    ("def f():\n    return 1\n", edit_body("f.py", "return 1", "return 2")),
    ("a\r\nb\r\nc\r\n", edit_body("f.py", "b", "B")),
    ("a\nb\nc", edit_body("f.py", "c", "C\nD")),
]


@needs_release
def test_release_plugins_run_in_the_sandbox_and_agree_with_ours(ctx):
    theirs_ctx = release_ctx(ctx)
    for i, (content, body) in enumerate(CASES):
        outcomes = []
        for which, tool_ctx in (("ours", ctx), ("theirs", theirs_ctx)):
            d = f"/tmp/r{i}-{which}"
            bash(ctx, f"mkdir -p {d} && cd {d}")
            ctx.sandbox.write_file(f"{d}/f.py", content.encode())
            result = run_tool("edit", body, tool_ctx)
            outcomes.append((result.ok, ctx.sandbox.read_file(f"{d}/f.py"), result.output))
        (ok, data, message), (their_ok, their_data, their_message) = outcomes
        assert (ok, data) == (their_ok, their_data), (content, body, their_message)
        assert numbers_and_snippet(message) == numbers_and_snippet(their_message), (message, their_message)
        assert message.endswith("\n") and their_message.endswith("\n")
    for body in ("new.py\nx", "new.py\nx\n", "new.py"):
        sizes = []
        for which, tool_ctx in (("ours", ctx), ("theirs", theirs_ctx)):
            bash(ctx, f"rm -rf /tmp/c-{which} && mkdir -p /tmp/c-{which} && cd /tmp/c-{which}")
            result = run_tool("create", body, tool_ctx)
            assert result.ok, result.output
            sizes.append((ctx.sandbox.read_file(f"/tmp/c-{which}/new.py"), numbers_and_snippet(result.output)))
        assert sizes[0] == sizes[1]
    assert {"create.py", "edit.py"} <= set(bash(ctx, "ls /swerl-plugins").split())


@needs_release
def test_release_messages_for_bash_and_submit(ctx):
    from cwm_agent.tools.release import load_release

    release = load_release(RELEASE)
    theirs = release_ctx(ctx)
    theirs.command_timeout = 1
    assert run_tool("bash", "sleep 5", theirs).output == release.bash_messages["timeout"]
    assert run_tool("bash", "exit", theirs).output == release.bash_messages["session_died"]
    assert run_tool("submit", "/nope.diff", theirs).output == release.submit_messages["unreadable"].render(
        path="/nope.diff"
    )
