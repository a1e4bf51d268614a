"""A hostile model after its submission: the accepted patch is kept whatever it does to the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cwm_agent.model.scripted_server import ScriptedServer

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


def call(tool: str, body: str, thinking: str) -> str:
    return f"{thinking}\n</think>\n<tool: {tool}>\n{body}\n</tool>"


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    (path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@e.x", "-C", str(path), *args],
            check=True,
            capture_output=True,
        )
    return path


@pytest.mark.parametrize(
    "attack",
    [
        # The harness's old fixed path for its diff, sent to /dev/null.
        "ln -sfn /dev/null /tmp/.cwm-agent-final.diff; ln -sfn /dev/zero /tmp/.cwm-diff",
        # A working tree whose diff is over the cap (sandbox.max_diff_bytes, 1 MB here).
        "head -c 3000000 /dev/urandom | base64 > /testbed/data.txt",
    ],
    ids=["redirect", "huge-diff"],
)
def test_the_accepted_patch_survives_what_the_model_does_after_submitting(repo, tmp_path, attack):
    replies = [
        call("bash", "cd /testbed && sed -i 's/a - b/a + b/' calc.py && git diff > /tmp/fix.patch", "Fix it."),
        call("submit", "/tmp/fix.patch", "Submit."),
        call("bash", attack, "Now something else."),
        "Done.\n</think>\nI fixed add.",
    ]
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text("sandbox: {max_diff_bytes: 1000000}\n")
    with ScriptedServer(replies=replies) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "cwm_agent.cli", "solve", "--repo", str(repo), "--issue", "add() subtracts.",
             "--model-url", server.url, "-o", str(out), "--config", str(config)],
            capture_output=True, text=True, timeout=150,
        )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    patch = (out / "patch.diff").read_text()
    assert "+    return a + b" in patch
    result = json.loads((out / "trajectory.jsonl").read_text().splitlines()[-1])
    assert result["type"] == "result" and "harness_error" not in json.dumps(result)
    if "huge" in attack:
        assert "sandbox.max_diff_bytes" in json.dumps(result)
    assert len((out / "trajectory.jsonl").read_bytes()) < 2_000_000
