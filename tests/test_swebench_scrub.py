"""Before the agent's first turn, the upstream fix must not be readable from git history."""

from __future__ import annotations

import pytest

from cwm_agent.agent.repo import scrub_git_history
from cwm_agent.sandbox.base import SandboxConfig, SandboxError
from cwm_agent.swebench.images import startup_commands

pytestmark = pytest.mark.docker

SETUP = r"""
set -e
rm -rf /testbed && mkdir /testbed && cd /testbed
git init -q -b main
echo 'def add(a, b): return a - b' > calc.py
git add calc.py && git commit -q -m base
git rev-parse HEAD > /tmp/base
echo 'def add(a, b): return a + b' > calc.py
git commit -q -am 'the upstream fix'
git rev-parse HEAD > /tmp/future
git tag v1.0
git tag -a v1.0-annotated -m release
git remote add origin https://example.invalid/repo.git
git update-ref refs/remotes/origin/main HEAD
git branch feature HEAD
git checkout -q -b work "$(cat /tmp/base)"
echo 'stashed work' > notes.txt && git add notes.txt && git stash -q
git rev-parse refs/stash > /tmp/stash
echo 'agent-visible local edit' > untracked.txt
echo '# edited' >> calc.py
"""


@pytest.fixture
def sandbox(base_image):
    from cwm_agent.sandbox.docker import DockerSandbox

    with DockerSandbox(SandboxConfig(image=base_image, startup_commands=startup_commands())) as sb:
        yield sb


def test_scrub_removes_every_future_commit_and_keeps_the_working_tree(sandbox):
    assert sandbox.run(SETUP).exit_code == 0
    base = sandbox.read_file("/tmp/base").decode().strip()
    future = sandbox.read_file("/tmp/future").decode().strip()
    stash = sandbox.read_file("/tmp/stash").decode().strip()
    assert sandbox.run(f"git cat-file -e {future}").exit_code == 0  # visible before

    scrub_git_history(sandbox, base)

    assert sandbox.run("git log --all --format=%H").output.split() == [base]
    for sha in (future, stash):
        assert sandbox.run(f"git cat-file -e {sha}").exit_code != 0, sha
    assert sandbox.run("git rev-parse HEAD").output.strip() == base
    assert sandbox.run("git symbolic-ref --short HEAD").output.strip() == "work"
    assert sandbox.run("git tag; git remote; git stash list; git reflog").output.strip() == ""
    assert sandbox.run("git for-each-ref --format='%(refname)'").output.split() == ["refs/heads/work"]
    assert "upstream fix" not in sandbox.run("git log --all --oneline; cat .git/packed-refs 2>/dev/null").output
    # The working tree is what it was: local edits and untracked files stay.
    assert sandbox.read_file("/testbed/calc.py") == b"def add(a, b): return a - b\n# edited\n"
    assert sandbox.read_file("/testbed/untracked.txt") == b"agent-visible local edit\n"
    assert "calc.py" in sandbox.run("git status --short").output


def test_scrub_from_a_checkout_of_the_future_leaves_head_at_base_on_a_branch(sandbox):
    setup = SETUP.split("git checkout -q -b work")[0] + "git checkout -q --detach main\n"
    assert sandbox.run(setup).exit_code == 0
    base = sandbox.read_file("/tmp/base").decode().strip()
    future = sandbox.read_file("/tmp/future").decode().strip()
    scrub_git_history(sandbox, base)
    assert sandbox.run("git rev-parse HEAD; git symbolic-ref --short HEAD").output.split() == [base, "main"]
    assert sandbox.run(f"git cat-file -e {future}").exit_code != 0
    assert sandbox.run("git log --all --format=%H").output.split() == [base]


def test_scrub_with_an_unknown_base_commit_fails_clearly(sandbox):
    assert sandbox.run(SETUP).exit_code == 0
    with pytest.raises(SandboxError, match="Scrubbing git history"):
        scrub_git_history(sandbox, "0" * 40)
    # Nothing was removed.
    assert sandbox.run("git tag").output.split() == ["v1.0", "v1.0-annotated"]


def test_startup_commands_activate_conda_only_where_present(sandbox):
    assert sandbox.run("pwd").output.strip() == "/testbed"
    assert sandbox.run("echo ${CONDA_DEFAULT_ENV:-none}").output.strip() == "none"
    # An image with conda (like the official ones): the same commands activate its `testbed` env.
    fake = (
        "mkdir -p /opt/miniconda3/bin && echo 'conda() { export CONDA_DEFAULT_ENV=$2; }' > /opt/miniconda3/bin/activate"
    )
    assert sandbox.run(fake).exit_code == 0
    assert sandbox.run("; ".join(startup_commands()) + "; echo $CONDA_DEFAULT_ENV").output.strip() == "testbed"
