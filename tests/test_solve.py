"""`cwm-agent solve` as a user runs it: a subprocess, a host git repository, a scripted model
over real HTTP, the agent in real Docker; then the patch checked on the host.

Also the user's mistakes (no model server, a wrong repository, revision, issue or config):
one clear line, exit 2, no traceback, no container; and Ctrl-C: exit 130, a partial trajectory
that loads, the container gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from cwm_agent.agent.trajectory import ExitStatus, Trajectory, rebuild_prompt
from cwm_agent.model.scripted_server import Reply, ScriptedServer
from cwm_agent.sandbox.base import OWNER_PID_LABEL, PROJECT_LABEL, RUN_ID_LABEL

BUGGY = '''\
def clamp(value, low, high):
    """Limit value to the closed range [low, high]."""
    if value < low:
        return low
    if value > high:
        return value
    return value
'''
TESTS = """\
from mathy import clamp


def test_clamp_low():
    assert clamp(-1, 0, 3) == 0


def test_clamp_high():
    assert clamp(5, 0, 3) == 3
"""
ISSUE = "clamp() ignores its upper bound: clamp(5, 0, 3) returns 5 instead of 3.\n"
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]


def cli() -> list[str]:
    script = Path(sys.executable).parent / "cwm-agent"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI; the result's `pid` finds the containers it started (their owner-pid label)."""
    env = {**os.environ, "NO_COLOR": "1"}
    with subprocess.Popen([*cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    done.pid = proc.pid
    return done


def is_probe(request) -> bool:
    """The client's one-token check that the server takes token-id prompts: not a turn of the episode."""
    return request.body.get("max_tokens") == 1 and request.body.get("prompt") == [128000]


def turn_requests(server: ScriptedServer) -> list:
    """The generation requests of the episode's turns."""
    return [r for r in server.generation_requests() if not is_probe(r)]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def call(tool: str, body: str, thinking: str) -> str:
    return f"{thinking}\n</think>\n<tool: {tool}>\n{body}\n</tool>"


def project_containers(docker_client, *labels: str) -> list:
    return docker_client.containers.list(
        all=True, sparse=True, filters={"label": [f"{PROJECT_LABEL}=cwm-agent", *labels]}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A host repository with a real bug and a test that fails because of it."""
    path = tmp_path / "mathy"
    (path / "tests").mkdir(parents=True)
    (path / "mathy.py").write_text(BUGGY)
    (path / "tests" / "test_mathy.py").write_text(TESTS)
    (path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "initial")
    return path


SOLVING = [
    call("bash", "cd /testbed && git ls-files && cat mathy.py", "The issue is about clamp. Let me look at the code."),
    call("bash", "python3 " + " ".join(PYTEST) + " tests 2>&1 | tail -5", "Run the tests to see the failure."),
    call(
        "edit",
        "mathy.py\n<<<<<<< SEARCH\n    if value > high:\n        return value\n=======\n"
        "    if value > high:\n        return high\n>>>>>>> REPLACE",
        "The upper branch returns value instead of high.",
    ),
    call(
        "create",
        "tests/test_clamp_bounds.py\nfrom mathy import clamp\n\n\ndef test_inside_is_kept():\n"
        "    assert clamp(2, 0, 3) == 2\n\n\ndef test_high_bound_is_returned():\n    assert clamp(10, 0, 3) == 3\n",
        "A regression test for the upper bound.",
    ),
    call("bash", "python3 " + " ".join(PYTEST) + " tests", "Run the whole suite."),
    call(
        "bash",
        "git add -N tests/test_clamp_bounds.py && git diff > /tmp/fix.patch && cat /tmp/fix.patch",
        "Write the patch.",
    ),
    call("submit", "/tmp/fix.patch", "The patch has the fix and the new test."),
    "The patch was accepted.\n</think>\n"
    "Fixed clamp: values above `high` now return `high`; added tests/test_clamp_bounds.py.",
]


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_solve_end_to_end_patch_fixes_the_failing_test_on_the_host(tmp_path, repo, docker_client):
    base = git(repo, "rev-parse", "HEAD").strip()
    out = tmp_path / "out"
    with ScriptedServer(replies=SOLVING) as server:
        proc = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url, "-o", str(out))
        requests = turn_requests(server)
        reuse = [x for r, x in zip(server.generation_requests(), server.prefix_reuse()) if not is_probe(r)]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    summary = proc.stdout
    assert "submitted" in summary
    assert "turns       8" in summary
    assert "mathy.py" in summary and "tests/test_clamp_bounds.py" in summary
    assert str(out / "patch.diff") in summary

    # The commands really ran in the container: the failing test, then the whole suite passing.
    trajectory = Trajectory.load(out / "trajectory.jsonl")
    assert trajectory.result.status is ExitStatus.SUBMITTED
    assert "1 failed, 1 passed" in trajectory.turns[1].observation.content
    assert "4 passed" in trajectory.turns[4].observation.content
    assert [t.action.tool for t in trajectory.turns[:7]] == ["bash", "bash", "edit", "create", "bash", "bash", "submit"]
    assert trajectory.turns[7].action is None and "Fixed clamp" in trajectory.turns[7].raw

    # The prefix property over the wire, and the trajectory rebuilds the last prompt exactly.
    assert len(requests) == 8
    assert reuse[1:] == [1.0] * 7  # (the first extends only the client's one-token probe)
    assert rebuild_prompt(trajectory) == requests[-1].prompt

    # On the host: the patch applies to a fresh clone at the base commit and fixes the test.
    patch = (out / "patch.diff").read_text()
    assert patch == trajectory.result.submission
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(repo), str(fresh))
    git(fresh, "checkout", "-q", base)
    before = subprocess.run([sys.executable, *PYTEST, "tests"], cwd=fresh, capture_output=True, text=True)
    assert before.returncode == 1 and "1 failed" in before.stdout
    git(fresh, "apply", str(out / "patch.diff"))
    after = subprocess.run([sys.executable, *PYTEST, "tests"], cwd=fresh, capture_output=True, text=True)
    assert after.returncode == 0, after.stdout
    assert "4 passed" in after.stdout

    # The harness's own diff has the same changes; the user's checkout is untouched.
    tree_diff = (out / "working_tree.diff").read_text()
    assert "+        return high" in tree_diff and "tests/test_clamp_bounds.py" in tree_diff
    assert "fix.patch" not in tree_diff
    assert (repo / "mathy.py").read_text() == BUGGY and git(repo, "status", "--porcelain") == ""
    assert project_containers(docker_client, f"{RUN_ID_LABEL}={trajectory.header.run_id}") == []
    assert project_containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}") == []


@pytest.mark.docker
@pytest.mark.timeout(60)
def test_solve_without_an_accepted_patch_exits_1_and_keeps_the_working_tree_diff(tmp_path, repo, docker_client):
    replies = [call("bash", "echo 'x = 1' > scratch.py", "Try something."), call("bash", "true", "Then nothing.")]
    out = tmp_path / "out"
    with ScriptedServer(replies=replies) as server:
        proc = run_cli(
            "solve",
            "--repo",
            str(repo),
            "--issue",
            ISSUE,
            "--model-url",
            server.url,
            "-o",
            str(out),
            "--max-turns",
            "2",
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "turn_limit" in proc.stdout and "none accepted" in proc.stdout
    assert not (out / "patch.diff").exists()
    assert "scratch.py" in (out / "working_tree.diff").read_text()
    assert Trajectory.load(out / "trajectory.jsonl").result.status is ExitStatus.TURN_LIMIT


@pytest.mark.timeout(120)
def test_solve_with_the_local_backend_works_in_a_temporary_directory(tmp_path, repo):
    """No Docker at all: the repository goes to a temporary directory that the prompt names, the
    tools and the diff work there, and the directory is gone afterwards."""
    replies = [
        call("bash", "pwd && git ls-files", "Where am I?"),
        call(
            "edit",
            "mathy.py\n<<<<<<< SEARCH\n    if value > high:\n        return value\n=======\n"
            "    if value > high:\n        return high\n>>>>>>> REPLACE",
            "Fix the upper branch.",
        ),  # fmt: skip
        call("bash", "git diff > fix.patch", "Write the patch."),
        call("submit", "fix.patch", "Submit it."),
        "Done.\n</think>\nFixed clamp.",
    ]
    out = tmp_path / "out"
    with ScriptedServer(replies=replies) as server:
        proc = run_cli(
            "solve",
            "--sandbox",
            "local",
            "--repo",
            str(repo),
            "--issue",
            ISSUE,
            "--model-url",
            server.url,
            "-o",
            str(out),
        )
        first_prompt = turn_requests(server)[0].prompt
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trajectory = Trajectory.load(out / "trajectory.jsonl")
    workdir = trajectory.turns[0].observation.content.split("\n")[1]
    assert workdir.startswith(tempfile.gettempdir()) and "cwm-local-" in workdir
    assert workdir in first_prompt and "/testbed" not in first_prompt
    assert "+        return high" in (out / "patch.diff").read_text()
    assert "fix.patch" not in (out / "working_tree.diff").read_text()  # patch files are not changes
    assert not Path(workdir).exists()
    assert git(repo, "status", "--porcelain") == ""  # the user's checkout is untouched


# -- user mistakes -----------------------------------------------------------------------------


def assert_clear_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    message = proc.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) <= 2, message
    for word in words:
        assert word in message, message


@pytest.mark.timeout(60)
def test_solve_with_no_model_server_says_how_to_start_one(tmp_path, repo, docker_client):
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "out"
    started = time.monotonic()
    proc = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", url, "-o", str(out))
    assert_clear_error(proc, "cwm-agent serve", "--model-url")
    assert time.monotonic() - started < 30
    assert not out.exists()
    assert project_containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}") == []


@pytest.fixture(scope="module")
def idle_server():
    """A model server for the argument checks (none of them should get as far as asking it)."""
    with ScriptedServer(replies=[]) as server:
        yield server


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case",
    ["not_a_repo", "missing_path", "bad_commit", "empty_issue", "unreadable_issue", "bad_yaml", "bad_key", "no_image"],
)
def test_solve_user_mistakes_are_one_clear_line(tmp_path, repo, docker_client, idle_server, case):
    args = {"--repo": str(repo), "--issue": ISSUE, "--model-url": idle_server.url, "-o": str(tmp_path / "out")}
    expect: tuple[str, ...]
    if case == "not_a_repo":
        plain = tmp_path / "plain"
        plain.mkdir()
        args["--repo"], expect = str(plain), ("not a git repository",)
    elif case == "missing_path":
        args["--repo"], expect = str(tmp_path / "nowhere"), ("nowhere",)
    elif case == "bad_commit":
        args["--commit"], expect = "no-such-rev", ("no-such-rev",)
    elif case == "empty_issue":
        args["--issue"], expect = "  \n", ("--issue",)
    elif case == "unreadable_issue":
        args["--issue"], expect = f"@{tmp_path / 'missing.md'}", ("missing.md",)
    elif case == "bad_yaml":
        (tmp_path / "c.yaml").write_text("agent: [max_turns: 3\n")
        args["--config"], expect = str(tmp_path / "c.yaml"), ("c.yaml", "YAML")
    elif case == "bad_key":
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"agent": {"max_turn": 3}}))
        args["--config"], expect = str(tmp_path / "c.yaml"), ("agent.max_turn",)
    else:
        args["--image"], expect = "cwm-agent/no-such-image:1", ("cwm-agent/no-such-image:1",)
    proc = run_cli("solve", *[x for pair in args.items() for x in pair], timeout=60)
    assert_clear_error(proc, *expect)
    if case == "no_image":  # found once the run had begun: its record says so
        assert Trajectory.load(tmp_path / "out" / "trajectory.jsonl").result.status is ExitStatus.SANDBOX_ERROR
        assert not (tmp_path / "out" / "patch.diff").exists()
    else:
        assert not (tmp_path / "out").exists()
    assert turn_requests(idle_server) == []
    assert project_containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}") == []


@pytest.mark.timeout(60)
def test_solve_output_path_that_is_a_file_or_unwritable_is_one_clear_line(tmp_path, repo, idle_server):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    proc = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", idle_server.url, "-o", str(taken))
    assert_clear_error(proc, str(taken))
    assert taken.read_text() == "mine\n"
    # A directory below a file cannot be made: found only once the run writes its trajectory.
    below = taken / "out"
    scratch_before = set(Path(tempfile.gettempdir()).glob("cwm-repo-*"))
    proc = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", idle_server.url, "-o", str(below))
    assert_clear_error(proc, str(below))
    assert set(Path(tempfile.gettempdir()).glob("cwm-repo-*")) <= scratch_before  # the host clone is removed
    assert turn_requests(idle_server) == []


def test_solve_max_turns_zero_is_refused_not_ignored(tmp_path, repo, idle_server):
    proc = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", idle_server.url,
                   "-o", str(tmp_path / "out"), "--max-turns", "0")  # fmt: skip
    assert_clear_error(proc, "agent.max_turns")
    assert not (tmp_path / "out").exists()


def test_a_run_without_a_patch_removes_an_earlier_runs_patch_file(tmp_path):
    from cwm_agent.agent.record import EpisodeRecord
    from cwm_agent.cli.solve import write_outputs

    earlier = EpisodeRecord(
        task_id="t", status=ExitStatus.SUBMITTED, graded=True, submission="diff --git a/x b/x\n", final_diff="d1"
    )
    write_outputs(earlier, tmp_path)
    assert (tmp_path / "patch.diff").read_text() == "diff --git a/x b/x\n"
    later = EpisodeRecord(task_id="t", status=ExitStatus.TURN_LIMIT, final_diff="d2")
    write_outputs(later, tmp_path)
    assert not (tmp_path / "patch.diff").exists() and (tmp_path / "working_tree.diff").read_text() == "d2"


# -- Ctrl-C and SIGTERM -------------------------------------------------------------------------


def start_solve(repo: Path, url: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*cli(), "solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", url, "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)


def check_interrupted(proc: subprocess.Popen, path: Path, docker_client, sig: int, turns: int) -> Trajectory:
    started = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 15, "the run did not stop promptly"
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), stdout + stderr
    assert "interrupted" in stderr and str(path) in stderr
    assert "Traceback" not in stderr
    trajectory = Trajectory.load(path)
    assert len(trajectory.turns) == turns
    assert trajectory.result is not None and trajectory.result.status is ExitStatus.INTERRUPTED
    assert project_containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}") == []
    assert project_containers(docker_client, f"{RUN_ID_LABEL}={trajectory.header.run_id}") == []
    assert not (path.parent / "patch.diff").exists()
    return trajectory


@contextlib.contextmanager
def slow_second_reply_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A scripted model server in a process of its own: the first reply at once, the second after
    60 s (the run is then waiting for it). Yields its URL and the process; stopped on exit."""
    script = tmp_path / "replies.json"
    script.write_text(json.dumps([
        call("bash", "echo first turn", "Look around."),
        {"text": call("bash", "echo never", "Slow."), "latency": 60},
    ]))  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.model.scripted_server", "--replies", str(script), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "scripted model server at" in server.stdout.readline()
        yield f"http://127.0.0.1:{port}/v1", server
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.mark.docker
@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_while_waiting_for_the_model(tmp_path, repo, docker_client, sig):
    """The model server is a separate process, slow on the second reply; the user presses Ctrl-C."""
    out = tmp_path / "out"
    path = out / "trajectory.jsonl"
    proc = None
    with slow_second_reply_server(tmp_path) as (url, _):
        try:
            proc = start_solve(repo, url, out)
            wait_for(lambda: path.exists() and '"type":"turn"' in path.read_text(), proc, "the first turn")
            time.sleep(0.5)  # now waiting for the slow second reply
            assert project_containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}"), "no container while running?"
            trajectory = check_interrupted(proc, path, docker_client, sig, turns=1)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert "first turn" in trajectory.turns[0].observation.content


@pytest.mark.docker
@pytest.mark.timeout(90)
def test_interrupt_while_a_command_runs(tmp_path, repo, docker_client):
    """Ctrl-C during a long command: the run stops at once (not when the command would end)."""
    out = tmp_path / "out"
    path = out / "trajectory.jsonl"
    with ScriptedServer(replies=[call("bash", "sleep 100", "Wait a while.")]) as server:
        proc = start_solve(repo, server.url, out)
        try:
            wait_for(lambda: len(turn_requests(server)) == 1, proc, "the first request")
            time.sleep(1.5)  # the command is running
            trajectory = check_interrupted(proc, path, docker_client, signal.SIGINT, turns=1)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert trajectory.turns[0].action.body == "sleep 100" and trajectory.turns[0].observation is None


@pytest.mark.docker
@pytest.mark.timeout(90)
def test_model_server_killed_mid_run_reports_model_error(tmp_path, repo, docker_client):
    """The server process dies (SIGKILL) while the agent waits for a reply: a clear status, exit 1."""
    config = tmp_path / "fast-retries.yaml"
    config.write_text(yaml.safe_dump({"model": {"max_retries": 2, "retry_initial_delay": 0.1, "retry_max_delay": 0.2}}))
    out = tmp_path / "out"
    path = out / "trajectory.jsonl"
    proc = None
    with slow_second_reply_server(tmp_path) as (url, server):
        try:
            proc = subprocess.Popen(
                [*cli(), "solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", url,
                 "--config", str(config), "-o", str(out)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            wait_for(lambda: path.exists() and '"type":"turn"' in path.read_text(), proc, "the first turn")
            time.sleep(0.5)
            server.kill()
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr
    assert "model_error" in stdout and "not reachable" in stdout
    trajectory = Trajectory.load(path)
    assert trajectory.result.status is ExitStatus.MODEL_ERROR and len(trajectory.turns) == 1
    assert project_containers(docker_client, f"{OWNER_PID_LABEL}={proc.pid}") == []


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_solve_streams_each_turn_as_it_happens_and_q_silences_it(tmp_path, repo, docker_client):
    """A line per turn arrives while the episode still runs (a real one can take hours); -q prints none."""
    out = tmp_path / "out"
    replies = [Reply(text, latency=0.3) if i == len(SOLVING) - 1 else text for i, text in enumerate(SOLVING)]
    with ScriptedServer(replies=replies) as server:
        proc = subprocess.Popen(
            [*cli(), "solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url, "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        streamed, running_when_seen = [], None
        for line in proc.stderr:
            streamed.append(line.rstrip("\n"))
            if line.startswith("turn   7"):  # the submit turn; the final reply is still being generated
                running_when_seen = proc.poll() is None
        stdout = proc.stdout.read()
        proc.wait(timeout=60)
    assert proc.returncode == 0, stdout + "\n".join(streamed)
    assert running_when_seen is True, streamed
    turns = [line for line in streamed if line.startswith("turn ")]
    assert [line.split()[1] for line in turns] == [str(i) for i in range(1, 9)]
    assert [line.split()[2] for line in turns] == ["bash", "bash", "edit", "create", "bash", "bash", "submit", "-"]
    assert "cd /testbed && git ls-files && cat mathy.py" in turns[0]
    # After a submission, a reply that calls no tool ends the episode (CWM's rule): shown as what it was.
    assert "/tmp/fix.patch" in turns[6] and "(format error) FormatError: The reply invokes no tool." in turns[7]
    trajectory = Trajectory.load(out / "trajectory.jsonl")
    for line, turn in zip(turns, trajectory.turns):
        assert f"{turn.tokens.prompt:,} in / {turn.tokens.completion:,} out" in line
        assert re.search(r"\d+\.\ds  ", line)
    run_id = trajectory.header.run_id
    assert f"run id {run_id}" in streamed[0] and f"run id      {run_id}" in stdout

    quiet = tmp_path / "quiet"
    with ScriptedServer(replies=SOLVING) as server:
        proc = run_cli(
            "solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url, "-o", str(quiet), "-q"
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "" and "submitted" in proc.stdout


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_solve_refuses_a_non_empty_output_unless_overwrite(tmp_path, repo, docker_client):
    out = tmp_path / "out"
    with ScriptedServer(replies=SOLVING) as server:
        first = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url, "-o", str(out), "-q")
        assert first.returncode == 0, first.stdout + first.stderr
        kept = (out / "trajectory.jsonl").read_bytes()
        asked = len(turn_requests(server))
        again = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url, "-o", str(out))
        assert_clear_error(again, str(out), "not empty", "--overwrite")
        assert (out / "trajectory.jsonl").read_bytes() == kept and len(turn_requests(server)) == asked
    with ScriptedServer(replies=SOLVING) as server:
        forced = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url, "-o", str(out),
                         "-q", "--overwrite")  # fmt: skip
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (out / "trajectory.jsonl").read_bytes() != kept
    empty = tmp_path / "empty"
    empty.mkdir()
    with ScriptedServer(replies=SOLVING) as server:
        into_empty = run_cli("solve", "--repo", str(repo), "--issue", ISSUE, "--model-url", server.url,
                             "-o", str(empty), "-q")  # fmt: skip
    assert into_empty.returncode == 0, into_empty.stdout + into_empty.stderr
