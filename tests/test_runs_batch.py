"""Batch runs you can trust: rollouts, grading as CWM grades, refused mixed resumes, the lock, a dead model
server, token accounting. A real `cwm-agent swebench run` subprocess, real Docker, a scripted model over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gold_policy import GoldPolicy
from terminal import open_terminal, read_until_exit

from cwm_agent.agent.trajectory import Trajectory
from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.sandbox.base import OWNER_PID_LABEL
from cwm_agent.swebench.local import INSTANCES_FILE

pytestmark = pytest.mark.docker

IDS = ["cwm-local__inflection-1", "cwm-local__six-1", "cwm-local__more-itertools-1"]
_launched: list[int] = []


def cli() -> list[str]:
    script = Path(sys.executable).parent / "cwm-agent"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]


def start(out: Path, server: ScriptedServer, *extra: str, dataset: Path = INSTANCES_FILE) -> subprocess.Popen:
    args = ["swebench", "run", "--dataset", str(dataset), "--output", str(out), "--model-url", server.url, *extra]
    proc = subprocess.Popen(
        [*cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )  # fmt: skip
    _launched.append(proc.pid)
    return proc


def run(out: Path, server: ScriptedServer, *extra: str, dataset: Path = INSTANCES_FILE, timeout: float = 120):
    proc = start(out, server, *extra, dataset=dataset)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the run took over {timeout}s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def containers_of(pid: int) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={OWNER_PID_LABEL}={pid}"], capture_output=True, text=True
    ).stdout.split()


@pytest.fixture(scope="module", autouse=True)
def no_container_left():
    yield
    left = [c for pid in _launched for c in containers_of(pid)]
    for container in left:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    assert not left, f"containers left behind: {left}"


def is_probe(request) -> bool:
    return request.body.get("max_tokens") == 1 and request.body.get("prompt") == [128000]


class UnfinishedPolicy(GoldPolicy):
    """Submits the gold patch on turn 3, then keeps running `true`: the turn limit ends it after a submission."""

    def __call__(self, request):
        reply = super().__call__(request)
        if not isinstance(reply, str):
            return reply
        turn = request.prompt.count("<|start_header_id|>assistant<|end_header_id|>") - 1
        return reply if turn < 3 else "Check again.\n</think>\n<tool: bash>\ntrue\n</tool>"


def test_rollouts_run_round_robin_with_their_seeds_and_the_tokens_add_up(model, tmp_path):
    server, _ = model
    out = tmp_path / "run"
    before = len(server.requests)
    proc = run(out, server, "--rollouts", "2", "--test-rollouts", "1", "--seed", "5", "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = lines(out / "results.jsonl")
    # Per instance, in dataset order: patch rollouts, then test rollouts.
    expected = [(i, kind, k) for i in IDS for kind, k in (("patch", 0), ("patch", 1), ("test", 0))]
    assert [(r["instance_id"], r["kind"], r["rollout"]) for r in results] == expected
    assert [r["item_id"] for r in results][:3] == [IDS[0], f"{IDS[0]}.patch-1", f"{IDS[0]}.test-0"]
    assert all(r["status"] == "submitted" and r["graded"] for r in results)
    assert sorted(p.name for p in (out / "trajectories").iterdir()) == sorted(f"{r['item_id']}.jsonl" for r in results)

    # preds.jsonl is rollout 0 of kind patch; preds/rollout-1.jsonl the second rollout.
    preds = lines(out / "preds.jsonl")
    assert [p["instance_id"] for p in preds] == IDS and all(p["model_patch"] for p in preds)
    assert [p["instance_id"] for p in lines(out / "preds" / "rollout-1.jsonl")] == IDS
    assert not (out / "preds" / "rollout-0.jsonl").exists()

    # Each rollout sampled with SEED + k, and the requests carried it.
    trajectories = {r["item_id"]: Trajectory.load(out / "trajectories" / f"{r['item_id']}.jsonl") for r in results}
    for r in results:
        assert trajectories[r["item_id"]].header.config["sampling"]["seed"] == 5 + r["rollout"]
    requests = [q for q in server.requests[before:] if q.prompt is not None and not is_probe(q)]
    assert {q.body.get("seed") for q in requests} == {5, 6}

    # Round robin: every instance's first patch rollout starts before any second one.
    # (Two workers start sandboxes side by side, so neighbours in the queue may start in either order.)
    started = {k: t.header.started_at for k, t in trajectories.items()}
    assert max(started[i] for i in IDS) < min(started[f"{i}.patch-1"] for i in IDS)

    # Token accounting: per item and per run, equal to what the server itself counted.
    assert sum(r["tokens"]["prompt"] for r in results) == sum(q.prompt_tokens for q in requests)
    assert sum(r["tokens"]["cached"] for r in results) == sum(q.cached_tokens for q in requests)
    for r in results:
        turns = trajectories[r["item_id"]].turns
        assert r["tokens"]["completion"] == sum(t.tokens.completion for t in turns) > 0
        assert r["tokens"]["prompt"] > r["tokens"]["context"] > 0  # processed over all requests vs. final size
        assert r["model_seconds"] > 0 and r["tool_seconds"] > 0
    total = sum(r["tokens"]["prompt"] for r in results)
    assert f"tokens: {total:,} processed" in proc.stdout
    # Resumable per work item: a lost result line reruns that rollout alone.
    kept = (out / "results.jsonl").read_text().splitlines()
    dropped = next(i for i, line in enumerate(kept) if json.loads(line)["item_id"] == f"{IDS[1]}.patch-1")
    (out / "results.jsonl").write_text("\n".join(kept[:dropped] + kept[dropped + 1 :]) + "\n")
    resumed = run(out, server, "--rollouts", "2", "--test-rollouts", "1", "--seed", "5", "--workers", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "9/9 work items done (1 in this run, 8 before)" in resumed.stdout
    assert [r["item_id"] for r in lines(out / "results.jsonl")] == [r["item_id"] for r in results]

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["rollouts"] == 2 and manifest["test_rollouts"] == 1 and manifest["seed"] == 5
    assert manifest["model"]["id"] == server.model and manifest["dataset"]["instance_count"] == 3
    assert manifest["run_ids"] and manifest["run_ids"][0] in proc.stderr and manifest["run_ids"][0] in proc.stdout


def test_unfinished_episodes_are_not_graded_unless_asked_and_a_mixed_resume_is_refused(local_images, tmp_path):
    with ScriptedServer(policy=UnfinishedPolicy(local_images)) as server:
        out = tmp_path / "run"
        proc = run(out, server, "-c", "agent.max_turns=5", "--workers", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr  # every item ran: the model's failures are results
        results = lines(out / "results.jsonl")
        assert all(r["status"] == "turn_limit" and not r["graded"] for r in results)
        assert all(r["submission"].startswith("diff --git") for r in results)  # kept in the results
        assert all(p["model_patch"] == "" for p in lines(out / "preds.jsonl"))  # but not graded
        assert "unfinished: 3 ended on a turn, context or time limit after a submission" in proc.stdout
        assert "0 of 3 with a patch" in proc.stdout and "evaluate them with" not in proc.stdout
        before = (out / "results.jsonl").read_bytes()

        # The same folder with another setting: refused in one line naming it; nothing changes.
        cases = {
            "agent.max_turns 5 -> 6": ["-c", "agent.max_turns=6"],
            "--rollouts 1 -> 2": ["-c", "agent.max_turns=5", "--rollouts", "2"],
        }
        for named, args in cases.items():
            refused = run(out, server, *args)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            message = refused.stderr.strip()
            assert message.startswith("error:") and "\n" not in message, message
            assert named in message and "--allow-mixed" in message, message
        assert (out / "results.jsonl").read_bytes() == before

        # --allow-mixed continues and records the new settings on the new lines only.
        mixed = run(out, server, "-c", "agent.max_turns=5", "--rollouts", "2", "--allow-mixed")
        assert mixed.returncode == 0, mixed.stdout + mixed.stderr
        after = lines(out / "results.jsonl")
        assert len(after) == 6
        assert all("settings" not in r for r in after if r["rollout"] == 0)
        for r in (r for r in after if r["rollout"] == 1):
            assert r["settings"]["rollouts"] == 2 and "--rollouts 1 -> 2" in r["settings"]["differences"]
        assert json.loads((out / "run.json").read_text())["mixed"] is True

        # --grade-unfinished puts the last submissions in the predictions.
        graded = run(tmp_path / "graded", server, "-c", "agent.max_turns=5", "--grade-unfinished", "--workers", "3")
        assert graded.returncode == 0, graded.stdout + graded.stderr
        assert all(p["model_patch"].startswith("diff --git") for p in lines(tmp_path / "graded" / "preds.jsonl"))
        assert "3 of 3 with a patch" in graded.stdout and "evaluate them with" in graded.stdout


def test_a_second_run_into_a_locked_folder_and_a_duplicated_id_are_one_line_errors(model, tmp_path):
    server, _ = model
    server.latency = 0.3
    out = tmp_path / "run"
    first = start(out, server, "--workers", "1")
    try:
        deadline = time.monotonic() + 60
        while not (out / "run.lock").exists() or not (out / "run.lock").read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.05)
        second = run(out, server, "--workers", "1")
        assert second.returncode == 2
        message = second.stderr.strip()
        assert message.startswith("error:") and "\n" not in message and f"pid {first.pid}" in message, message
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    server.latency = 0.0

    rows = INSTANCES_FILE.read_text().splitlines()
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join([*rows, rows[1]]) + "\n")
    dup = run(tmp_path / "dup", server, dataset=twice)
    assert dup.returncode == 2 and "cwm-local__six-1 more than once" in dup.stderr
    assert len(dup.stderr.strip().splitlines()) == 1 and not (tmp_path / "dup").exists()


def test_a_dead_model_server_stops_the_batch_with_exit_4(local_images, tmp_path):
    server = ScriptedServer(policy=GoldPolicy(local_images), latency=0.4).start()
    out = tmp_path / "run"
    proc = start(out, server, "--workers", "1", "-c", "model.breaker_seconds=2", "-c", "model.retry_max_delay=0.5")
    try:
        deadline = time.monotonic() + 60
        while not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.stop()
    stopped = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 4, stdout + stderr
    assert time.monotonic() - stopped < 20  # not 70-90 s per instance
    assert "STOPPED: the model server" in stdout and "run the same command again to resume" in stdout
    assert "Traceback" not in stdout + stderr
    results = lines(out / "results.jsonl")
    assert len(results) == 1 and results[0]["status"] == "submitted"  # the rest were neither run nor recorded
    assert containers_of(proc.pid) == []


def test_in_a_terminal_the_run_shows_its_running_items_live(model, tmp_path):
    """`swebench run` in a pseudo-terminal: the block names the running items with their turn, its clock
    moves, and the summary follows; no traceback, no status line spam."""

    server, _ = model
    server.latency = 0.4
    master, slave = open_terminal(120, 30)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    args = ["swebench", "run", "--dataset", str(INSTANCES_FILE), "--output", str(tmp_path / "run"),
            "--model-url", server.url, "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen([*cli(), *args], stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm"})
    _launched.append(proc.pid)
    os.close(slave)
    try:
        screen = read_until_exit(master, proc, 120)
        proc.wait(timeout=30)
    finally:
        server.latency = 0.0
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert proc.returncode == 0, text
    assert re.search(r"cwm-local__\S+ +turn +[1-4] +0:00:0\d", text), text
    assert "elapsed 0:00:01" in text and "elapsed 0:00:02" in text
    assert "3/3 work items done" in text and "Traceback" not in text
    assert "\x1b[" in screen  # redrawn in place


def test_a_batch_where_every_item_errors_exits_3_and_suggests_no_evaluation(model, tmp_path):
    server, _ = model
    rows = [json.loads(line) for line in INSTANCES_FILE.read_text().splitlines()]
    missing = [{**row, "instance_id": f"cwm-local__missing-{i}"} for i, row in enumerate(rows)]
    dataset = tmp_path / "missing.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in missing))
    proc = run(tmp_path / "run", server, dataset=dataset)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "endings: image_error 3" in proc.stdout
    assert re.search(r"image_error \(3\), first: No image for cwm-local__missing-\d: tried ", proc.stdout)
    assert "build it with `cwm-agent swebench build-local`" in proc.stdout  # the first full message
    assert "0 of 3 with a patch" in proc.stdout and "evaluate them with" not in proc.stdout


def test_a_folder_from_before_manifests_is_resumed_without_losing_its_patches(model, tmp_path):
    server, _ = model
    out = tmp_path / "run"
    out.mkdir()
    patch = (
        "diff --git a/inflection.py b/inflection.py\n--- a/inflection.py\n+++ b/inflection.py\n@@ -1 +1 @@\n-a\n+b\n"
    )
    older = {"instance_id": IDS[0], "status": "submitted", "detail": "", "submitted": True, "turns": 4,
             "context_tokens": 3402, "completion_tokens": 347, "elapsed": 2.5}  # fmt: skip
    (out / "results.jsonl").write_text(json.dumps(older) + "\n")
    prediction = {"instance_id": IDS[0], "model_name_or_path": server.model, "model_patch": patch}
    (out / "preds.jsonl").write_text(json.dumps(prediction) + "\n")
    proc = run(out, server)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3/3 work items done (2 in this run, 1 before)" in proc.stdout
    results = lines(out / "results.jsonl")
    assert [r["item_id"] for r in results] == IDS
    assert results[0]["submission"] == patch and results[0]["graded"] and results[0]["turns"] == 4
    assert lines(out / "preds.jsonl")[0]["model_patch"] == patch
    assert json.loads((out / "run.json").read_text())["model"]["id"] == server.model
