"""`cwm-agent swebench run` end to end: a real subprocess, real Docker, a scripted model over real HTTP.

The scripted model applies each instance's gold patch (tests/gold_policy.py), so a run's
predictions are known in advance and must evaluate as resolved. The batch is interrupted in
every way a six-hour run gets interrupted (kill -9, Ctrl-C, SIGTERM, a model error, a missing
image), and each time a re-run must end with the same files as a run that never broke.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwm_agent.agent.trajectory import Trajectory
from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.sandbox.base import OWNER_PID_LABEL, RUN_ID_LABEL
from cwm_agent.swebench.local import INSTANCES_FILE

pytestmark = pytest.mark.docker

IDS = ["cwm-local__inflection-1", "cwm-local__six-1", "cwm-local__more-itertools-1"]  # dataset order
INFLECTION, SIX, MORE = IDS
_launched: list[int] = []  # pids of the runs started here: their containers are the ones we own


def cli() -> list[str]:
    script = Path(sys.executable).parent / "cwm-agent"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def _default_sigint() -> None:
    # A child of a shell's background job inherits SIGINT ignored; Ctrl-C must reach it here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*cli(), "swebench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(), preexec_fn=_default_sigint,
    )  # fmt: skip
    _launched.append(proc.pid)
    return proc


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = start(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"cwm-agent swebench {' '.join(args)} ran over {timeout}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def batch(server: ScriptedServer, out: Path, *extra: str, dataset: Path = INSTANCES_FILE, workers: int = 2):
    return run("run", "--dataset", str(dataset), "--output", str(out), "--workers", str(workers),
               "--model-url", server.url, *extra)  # fmt: skip


def containers_of(pid: int) -> list[dict]:
    """The containers a run process started (by the owner-pid label every sandbox carries)."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={OWNER_PID_LABEL}={pid}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return []
    return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout or "[]")


@pytest.fixture(scope="module", autouse=True)
def no_container_left():
    """After the module: none of our runs' containers remain (removed anyway so none leaks)."""
    yield
    left = [c["Name"] for pid in _launched for c in containers_of(pid)]
    for pid in _launched:
        for c in containers_of(pid):
            subprocess.run(["docker", "rm", "-f", c["Id"]], capture_output=True)
    assert not left, f"containers left behind: {left}"


def generations(server: ScriptedServer) -> int:
    return len(server.generation_requests())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory: contents and modification time."""
    return {
        str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and "eval" not in p.relative_to(out).parts and p.name != "run.lock"
    }  # fmt: skip


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def result_lines(out: Path) -> int:
    path = out / "results.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def reference(gold, tmp_path_factory) -> Path:
    """An uninterrupted run over the local set with 2 workers: what every resumed run must match."""
    server, _ = gold
    out = tmp_path_factory.mktemp("reference") / "run"
    started = time.monotonic()
    result = batch(server, out)
    assert result.returncode == 0, result.stderr
    print(f"batch run, 3 local instances, 2 workers: {time.monotonic() - started:.1f} s (incl. CLI start)")
    return out


def test_batch_run_writes_official_predictions_and_they_resolve(model, reference, local_images):
    server, _ = model
    out = reference
    preds = lines(out / "preds.jsonl")
    gold_patch = {i.instance_id: i.patch for i in local_images}
    assert [p["instance_id"] for p in preds] == IDS  # dataset order, one line each
    for p in preds:
        assert set(p) == {"instance_id", "model_name_or_path", "model_patch"}
        assert p["model_name_or_path"] == server.model
        # Same change as the gold patch (the diff header lines differ: git diff writes its own).
        assert p["model_patch"].splitlines()[-8:] == gold_patch[p["instance_id"]].splitlines()[-8:]
    results = lines(out / "results.jsonl")
    assert [r["instance_id"] for r in results] == IDS
    assert all(r["status"] == "submitted" and r["graded"] and r["turns"] == 4 for r in results)
    assert [(r["kind"], r["rollout"], r["item_id"]) for r in results] == [("patch", 0, i) for i in IDS]
    for iid in IDS:
        trajectory = Trajectory.load(out / "trajectories" / f"{iid}.jsonl")
        assert trajectory.result is not None and trajectory.result.status.value == "submitted"
        assert trajectory.result.submission == next(p["model_patch"] for p in preds if p["instance_id"] == iid)
        assert len(trajectory.turns) == 4

    # Resume of a finished run: nothing reaches the model, nothing changes on disk.
    before, asked = snapshot(out), generations(server)
    again = batch(server, out)
    assert again.returncode == 0, again.stderr
    assert generations(server) == asked
    assert snapshot(out) == before
    assert "3/3 work items done (0 in this run, 3 before)" in again.stdout
    assert "3 of 3 with a patch" in again.stdout and "evaluate them with" in again.stdout

    evaluated = run("eval", "--predictions", str(out / "preds.jsonl"), "--dataset", str(INSTANCES_FILE),
                    "--output", str(out / "eval"), "--workers", "3")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["resolved_ids"] == sorted(IDS) and report["resolved_instances"] == 3
    assert report["unresolved_instances"] == report["error_instances"] == report["empty_patch_instances"] == 0
    assert report["schema_version"] == 2


def test_errors_are_kept_and_rerun_only_on_request(model, local_images, tmp_path):
    server, policy = model
    # A fourth instance whose image nobody built, and a model server refusing one instance.
    rows = [json.loads(line) for line in INSTANCES_FILE.read_text().splitlines()]
    missing = {**rows[1], "instance_id": "cwm-local__missing-1"}
    dataset = tmp_path / "with_missing.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in [*rows, missing]))
    order = [*IDS, "cwm-local__missing-1"]
    policy.fail = {INFLECTION}
    out = tmp_path / "run"

    first = batch(server, out, dataset=dataset)
    assert first.returncode == 3, first.stderr  # some work items errored
    assert "4/4 work items done" in first.stdout and "2 of 4 with a patch" in first.stdout
    assert "endings: submitted 2, " in first.stdout
    # Each error kind once, with its first full message.
    assert "image_error (1), first: No image for cwm-local__missing-1" in first.stdout
    assert "build it with `cwm-agent swebench build-local`" in first.stdout
    assert "model_error (1), first: " in first.stdout
    results = {r["instance_id"]: r for r in lines(out / "results.jsonl")}
    assert list(results) == order
    assert results[INFLECTION]["status"] == "model_error" and "HTTP 400" in results[INFLECTION]["detail"]
    assert results["cwm-local__missing-1"]["status"] == "image_error"
    assert "sweb.eval.x86_64.cwm-local__missing-1" in results["cwm-local__missing-1"]["detail"]
    assert results[SIX]["status"] == results[MORE]["status"] == "submitted"
    preds = {p["instance_id"]: p for p in lines(out / "preds.jsonl")}
    assert (
        list(preds) == order and preds[INFLECTION]["model_patch"] == preds["cwm-local__missing-1"]["model_patch"] == ""
    )

    # Without --rerun-errors the errors stand: no request, no change.
    policy.fail = set()
    before, asked = snapshot(out), generations(server)
    plain = batch(server, out, dataset=dataset)
    assert plain.returncode == 3, plain.stderr
    assert generations(server) == asked and snapshot(out) == before

    # With it, only the errored instances run again (the missing image fails again, quickly).
    seen_before = len(policy.seen)
    rerun = batch(server, out, "--rerun-errors", dataset=dataset)
    assert rerun.returncode == 3, rerun.stderr  # the image is still missing
    assert set(policy.seen[seen_before:]) == {INFLECTION}
    after = {r["instance_id"]: r for r in lines(out / "results.jsonl")}
    assert list(after) == order
    assert after[INFLECTION]["status"] == "submitted" and after["cwm-local__missing-1"]["status"] == "image_error"
    assert after[SIX] == results[SIX] and after[MORE] == results[MORE]
    now = snapshot(out)
    for iid in (SIX, MORE):  # finished instances: their trajectories were not touched
        assert now[f"trajectories/{iid}.jsonl"] == before[f"trajectories/{iid}.jsonl"]
    new_preds = {p["instance_id"]: p for p in lines(out / "preds.jsonl")}
    assert list(new_preds) == order and new_preds[INFLECTION]["model_patch"].startswith("diff --git")
    assert "4/4 work items done (2 in this run, 2 before)" in rerun.stdout and "3 of 4 with a patch" in rerun.stdout


def test_kill_9_mid_batch_then_prune_and_resume_gives_the_same_files(model, reference, tmp_path):
    server, policy = model
    server.latency = 0.25  # slow enough to kill an episode half way
    out = tmp_path / "run"
    seen_before = len(policy.seen)
    proc = start(
        "run", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--workers", "1", "--model-url", server.url
    )
    # The first instance is finished and the second one's episode has begun (its container runs).
    wait_for(lambda: result_lines(out) >= 1 and SIX in policy.seen[seen_before:], 60, "the second episode", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    server.latency = 0.0
    assert lines(out / "results.jsonl")[0]["instance_id"] == INFLECTION

    left = containers_of(proc.pid)
    assert len(left) == 1, "a SIGKILLed run leaves its running container (nothing could remove it)"
    run_id = left[0]["Config"]["Labels"][RUN_ID_LABEL]
    pruned = subprocess.run([*cli(), "sandbox", "prune", "--run-id", run_id, "--dead-only"],
                            capture_output=True, text=True, env=_env())  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert left[0]["Name"].lstrip("/") in pruned.stdout + pruned.stderr
    assert containers_of(proc.pid) == []

    # What a kill between (or inside) the two appends leaves: a prediction whose result line is torn.
    with (out / "preds.jsonl").open("a") as f:
        f.write(json.dumps({"instance_id": SIX, "model_name_or_path": server.model, "model_patch": "stale"}) + "\n")
    with (out / "results.jsonl").open("a") as f:
        f.write('{"instance_id":"cwm-local__six-1","status":"subm')

    resumed = batch(server, out, workers=1)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "preds.jsonl").read_bytes() == (reference / "preds.jsonl").read_bytes()
    results = lines(out / "results.jsonl")
    assert [r["instance_id"] for r in results] == IDS and all(r["status"] == "submitted" for r in results)
    assert Trajectory.load(out / "trajectories" / f"{SIX}.jsonl").result.status.value == "submitted"


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume(model, reference, tmp_path, sig, code, word):
    server, _ = model
    server.latency = 0.25
    out = tmp_path / "run"
    proc = start(
        "run", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--workers", "2", "--model-url", server.url
    )
    wait_for(lambda: result_lines(out) >= 1 and containers_of(proc.pid), 60, "a finished instance", proc)
    stopped_at = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    stop_seconds = time.monotonic() - stopped_at
    server.latency = 0.0
    assert proc.returncode == code, stderr
    assert f"{word}: containers removed" in stderr and "run again to resume" in stderr
    assert "Traceback" not in stderr
    assert containers_of(proc.pid) == []
    assert stop_seconds < 10
    done = lines(out / "results.jsonl")
    assert 1 <= len(done) < 3 and all(r["status"] == "submitted" for r in done)  # no 'interrupted' result kept

    with (out / "preds.jsonl").open("a") as f:  # and a prediction line cut mid-write
        f.write('{"instance_id":"cwm-local__more-itertools-1","model_name_or_path":"cwm-scr')
    resumed = batch(server, out)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "preds.jsonl").read_bytes() == (reference / "preds.jsonl").read_bytes()
    assert [r["instance_id"] for r in lines(out / "results.jsonl")] == IDS


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_inputs_exit_2_with_one_line(model, tmp_path):
    server, _ = model
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("keep me\n")
    cases = {
        "does not exist": ["--dataset", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o1"),
                           "--model-url", server.url],
        "nope__nope-1": ["--dataset", str(INSTANCES_FILE), "--instance-ids", "nope__nope-1",
                         "--output", str(tmp_path / "o2"), "--model-url", server.url],
        "is a file": ["--dataset", str(INSTANCES_FILE), "--output", str(a_file), "--model-url", server.url],
        "cannot write the run directory": ["--dataset", str(INSTANCES_FILE), "--output", str(a_file / "run"),
                                           "--model-url", server.url],
        "not reachable": ["--dataset", str(INSTANCES_FILE), "--output", str(tmp_path / "o3"),
                          "--model-url", f"http://127.0.0.1:{_closed_port()}/v1"],
    }  # fmt: skip
    asked = generations(server)
    for needle, args in cases.items():
        result = run("run", *args)
        assert result.returncode == 2, (needle, result.stderr)
        message = result.stderr.strip()
        assert "\n" not in message and message.startswith("error:") and needle in message, message
        assert "Traceback" not in result.stderr + result.stdout
    assert a_file.read_text() == "keep me\n"
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))  # no empty run directory left
    assert generations(server) == asked
    for pid in _launched[-len(cases) :]:
        assert containers_of(pid) == []


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_an_unexpected_failure_of_one_instance_does_not_end_the_batch(tmp_path, model):
    """One instance's trajectory cannot be written (its path is a directory): that instance is a
    `harness_error`, re-run on request, and the others finish normally."""
    server, _ = model
    out = tmp_path / "run"
    (out / "trajectories" / "cwm-local__six-1.jsonl").mkdir(parents=True)
    proc = batch(server, out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    status = {r["instance_id"]: r["status"] for r in lines(out / "results.jsonl")}
    assert status == {IDS[0]: "submitted", IDS[1]: "harness_error", IDS[2]: "submitted"}
    assert "IsADirectoryError" in lines(out / "results.jsonl")[1]["detail"]
    assert "harness_error (1), first: IsADirectoryError" in proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    log = (out / "logs" / "harness.log").read_text()
    assert "Traceback (most recent call last)" in log and "IsADirectoryError" in log
    assert str(out / "logs" / "harness.log") in proc.stdout
    (out / "trajectories" / "cwm-local__six-1.jsonl").rmdir()
    rerun = batch(server, out, "--rerun-errors")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert {r["status"] for r in lines(out / "results.jsonl")} == {"submitted"}
