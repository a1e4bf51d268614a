"""The tools through a real DockerSandbox on the base image: one container for the module.

Each test works in its own directory (or its own repository) so the order does not matter;
the shared session's current directory is reset by the `ctx` fixture.
"""

from __future__ import annotations

import pytest

from cwm_agent.sandbox.base import SandboxConfig
from cwm_agent.tools import ToolContext, run_tool

pytestmark = pytest.mark.docker

REPO = "/testbed"
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


# ---------------------------------------------------------------- bash


def test_bash_session_persists_and_output_is_merged(ctx):
    assert bash(ctx, "mkdir -p /tmp/b1 && cd /tmp/b1 && X=42") == ""
    assert bash(ctx, 'echo "$PWD $X"; echo err >&2; false') == "/tmp/b1 42\nerr"


def test_bash_timeout_and_dead_session_are_reported(ctx):
    ctx.command_timeout = 1
    result = run_tool("bash", "cd /tmp && echo started && sleep 20", ctx)
    assert result.timed_out and not result.ok
    assert result.output.startswith("started\n\n")
    assert "did not finish within 1 seconds" in result.output
    ctx.command_timeout = 30
    after = bash(ctx, "echo alive")
    assert after == "alive"

    result = run_tool("bash", "cd /tmp && exit 3", ctx)
    assert not result.ok and result.restarted
    assert "The session ended during this command" in result.output
    assert "(/testbed)" in result.output
    assert bash(ctx, "pwd") == "/testbed"


# ---------------------------------------------------------------- edit


def test_edit_through_sandbox_keeps_mode_and_resolves_relative_paths(ctx):
    bash(
        ctx,
        "mkdir -p /tmp/e1/pkg && printf 'import os\\n\\nprint(1)\\nprint(2)\\n' > /tmp/e1/pkg/run.py "
        "&& chmod 755 /tmp/e1/pkg/run.py",
    )
    bash(ctx, "cd /tmp/e1")
    result = run_tool("edit", "pkg/run.py\n<<<<<<< SEARCH\nprint(2)\n=======\nprint(3)\nprint(4)\n>>>>>>> REPLACE", ctx)
    assert result.ok, result.output
    assert "The file pkg/run.py was updated at line 4 and now has 5 lines" in result.output
    assert "     4\tprint(3)\n     5\tprint(4)" in result.output
    assert bash(ctx, "cat pkg/run.py; stat -c %a pkg/run.py") == "import os\n\nprint(1)\nprint(3)\nprint(4)\n755"
    # The session's directory is untouched by the tool's own helper commands.
    assert bash(ctx, "pwd") == "/tmp/e1"


def test_edit_errors_the_model_can_act_on(ctx):
    bash(ctx, "mkdir -p /tmp/e2 && cd /tmp/e2 && printf 'x = 1\\nx = 1\\n    y = 2\\n' > f.py")
    missing = run_tool("edit", "nope.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE", ctx)
    assert not missing.ok and "does not exist (resolved to /tmp/e2/nope.py)" in missing.output
    directory = run_tool("edit", "/tmp\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE", ctx)
    assert not directory.ok and "is a directory" in directory.output
    twice = run_tool("edit", "f.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE", ctx)
    assert not twice.ok and "appear 2 times" in twice.output and "lines 1, 2" in twice.output
    indent = run_tool("edit", "f.py\n<<<<<<< SEARCH\ny = 2\n=======\ny = 3\n>>>>>>> REPLACE", ctx)
    assert not indent.ok and "line(s) 3" in indent.output and "indentation" in indent.output
    assert bash(ctx, "cat f.py") == "x = 1\nx = 1\n    y = 2"  # nothing written on failure


def test_edit_follows_symlinks(ctx):
    bash(ctx, "mkdir -p /tmp/e3 && cd /tmp/e3 && echo old > target.txt && ln -s target.txt link.txt")
    result = run_tool("edit", "link.txt\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE", ctx)
    assert result.ok, result.output
    assert bash(ctx, "test -L link.txt && cat target.txt") == "new"


# ---------------------------------------------------------------- create


def test_create_relative_to_current_directory(ctx):
    bash(ctx, "mkdir -p /tmp/c1/sub && cd /tmp/c1/sub")
    result = run_tool("create", "../made.py\ndef f():\n    return 1", ctx)
    assert result.ok, result.output
    assert result.output == "The file ../made.py was created (2 lines)."
    assert bash(ctx, "cat -A /tmp/c1/made.py; stat -c %a /tmp/c1/made.py") == "def f():$\n    return 1$\n644"


def test_create_errors(ctx):
    bash(ctx, "mkdir -p /tmp/c2 && cd /tmp/c2 && echo keep > here.txt")
    exists = run_tool("create", "here.txt\nnew", ctx)
    assert not exists.ok and "already exists" in exists.output and "use edit" in exists.output
    assert bash(ctx, "cat here.txt") == "keep"
    no_parent = run_tool("create", "a/b/c.py\nx = 1", ctx)
    assert not no_parent.ok
    assert "parent directory /tmp/c2/a/b does not exist" in no_parent.output
    assert bash(ctx, "ls") == "here.txt"


# ---------------------------------------------------------------- submit


def test_edit_create_diff_submit_is_accepted_and_leaves_the_tree_alone(ctx):
    fix = run_tool("edit", "calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE", ctx)
    assert fix.ok, fix.output
    made = run_tool("create", "test_calc.py\nfrom calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5", ctx)
    assert made.ok, made.output
    bash(ctx, "git add -A && git diff --cached > /tmp/p.diff")
    before = bash(ctx, "git status --porcelain; git diff --cached --stat")

    result = run_tool("submit", "/tmp/p.diff", ctx)
    assert result.ok, result.output
    patch = bash(ctx, "cat /tmp/p.diff") + "\n"
    assert result.submission == patch
    assert "diff --git a/calc.py b/calc.py" in patch and "b/test_calc.py" in patch
    assert "marked as your final submission" in result.output
    assert f"<submission>\n{patch.rstrip(chr(10))}\n</submission>" in result.output
    assert bash(ctx, "git status --porcelain; git diff --cached --stat") == before

    # A relative path resolves against the session's directory.
    bash(ctx, "cd /tmp")
    assert run_tool("submit", "p.diff", ctx).ok
    # Leave /testbed as it was for other tests.
    bash(ctx, f"cd {REPO} && git reset -q --hard && git clean -qfd")


def test_submit_patch_against_another_base_is_rejected_with_gits_reason(ctx):
    bash(
        ctx,
        "rm -rf /tmp/other && mkdir /tmp/other && cd /tmp/other && git init -q && printf 'a\\nb\\nc\\n' > f.txt && "
        "git add f.txt && git commit -qm one && git rev-parse HEAD > /tmp/other-base && "
        "printf 'a\\nB\\nc\\n' > f.txt && git commit -qam two && printf 'a\\nBB\\nc\\n' > f.txt "
        "&& git diff > /tmp/other.diff",
    )
    base = bash(ctx, "cat /tmp/other-base")
    other = ToolContext(sandbox=ctx.sandbox, repo_dir="/tmp/other", base_commit=base, command_timeout=30)
    result = run_tool("submit", "/tmp/other.diff", other)
    assert not result.ok and result.submission is None
    assert "does not apply to the original code" in result.output
    assert "error: patch failed: f.txt:1" in result.output
    # Against the commit it was made on, the same patch is fine.
    other.base_commit = None
    assert run_tool("submit", "/tmp/other.diff", other).ok


def test_submit_refusals(ctx):
    bash(ctx, "mkdir -p /tmp/s1 && cd /tmp/s1 && : > empty.diff && echo 'not a patch' > notes.diff")
    cases = {
        "missing.diff": "no such file (resolved to /tmp/s1/missing.diff)",
        "empty.diff": "the file is empty",
        "notes.diff": "it is not a git diff",
        "/tmp": "it is a directory",
    }
    for path, phrase in cases.items():
        result = run_tool("submit", path, ctx)
        assert not result.ok and result.submission is None
        assert phrase in result.output, (path, result.output)


def test_submit_file_kind_returns_the_file_content(ctx):
    bash(ctx, "mkdir -p /tmp/t1 && printf 'print(\"Issue reproduced\")\\n' > /tmp/t1/test_issue.py")
    ctx.submit_kind = "file"
    result = run_tool("submit", "/tmp/t1/test_issue.py", ctx)
    assert result.ok, result.output
    assert result.submission == 'print("Issue reproduced")\n'
    assert '<submission>\nprint("Issue reproduced")\n</submission>' in result.output
