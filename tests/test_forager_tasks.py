"""`cwm-agent forage tasks` on a real library in its image (inflection 0.5.1, the local SWE-bench image):
real Docker, real pytest, real git, and the tasks judged by `cwm-agent swebench eval` like any dataset."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from forage_tasks import IMAGE, cli, generated, rows

from cwm_agent.forager.issue import fix_lines
from cwm_agent.sandbox.base import OWNER_PID_LABEL

pytestmark = pytest.mark.docker

COUNT = 3
SEED = 11


def docker_sh(image: str, script: str, stdin: str = "") -> str:
    proc = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", "none", "--label", "io.cwm-agent.project=cwm-agent", image,
         "bash", "-c", script],
        input=stdin.encode(), capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode("utf-8", errors="replace")  # tree objects are binary


@pytest.fixture(scope="module")
def made(local_images):
    """The tasks file (and the CLI's result) of one generation."""
    return generated(COUNT, SEED)


def test_tasks_are_swebench_instances_of_validated_bugs(made):
    path, proc = made
    tasks = rows(path)
    assert len(tasks) == COUNT
    assert f"{COUNT} tasks written to {path}" in proc.stdout
    assert len({t["instance_id"] for t in tasks}) == COUNT
    assert len({t["patch"] for t in tasks}) == COUNT  # no duplicate mutation
    for task in tasks:
        assert task["repo"] == "cwm-local/inflection"
        assert task["instance_id"].startswith("cwm-local__inflection-forage-")
        assert task["image"] == f"sweb.eval.x86_64.{task['instance_id']}:latest"
        assert task["FAIL_TO_PASS"] and task["PASS_TO_PASS"]
        assert not set(task["FAIL_TO_PASS"]) & set(task["PASS_TO_PASS"])
        assert task["test_patch"] == ""
        assert task["test_cmd"].startswith("pytest ") and task["log_parser"] == "pytest"
        assert task["patch"].startswith("diff --git a/inflection/__init__.py b/inflection/__init__.py")
        assert task["forage"]["file"] == "inflection/__init__.py" and task["forage"]["seed"] == SEED
        statement = task["problem_statement"]
        assert task["FAIL_TO_PASS"][0] in statement
        assert "diff --git" not in statement
        for line in fix_lines(task["patch"], ""):
            assert line not in statement, f"the issue shows the original code: {line!r}"


def test_gold_patch_resolves_and_the_unfixed_code_does_not(made, tmp_path):
    path, _ = made
    tasks = rows(path)
    gold = cli("swebench", "eval", "--gold", "--dataset", str(path), "--output", str(tmp_path / "gold"), "-w", "3")
    assert gold.returncode == 0, gold.stdout + gold.stderr
    report = json.loads((tmp_path / "gold" / "report.json").read_text())
    assert report["resolved_instances"] == COUNT, report

    # A patch that touches no code (a new notes file) applies, the tests run, and FAIL_TO_PASS fails.
    noop = (
        "diff --git a/NOTES.md b/NOTES.md\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+notes\n"
    )
    empty = tmp_path / "empty.jsonl"
    untouched = tmp_path / "noop.jsonl"
    for preds, patch in ((empty, ""), (untouched, noop)):
        preds.write_text(
            "".join(json.dumps({"instance_id": t["instance_id"], "model_patch": patch}) + "\n" for t in tasks)
        )
    for preds, name in ((empty, "empty"), (untouched, "noop")):
        proc = cli("swebench", "eval", "--predictions", str(preds), "--dataset", str(path),
                   "--output", str(tmp_path / name), "-w", "3")  # fmt: skip
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["resolved_instances"] == 0, (name, report, proc.stdout)
        assert report["empty_patch_instances" if name == "empty" else "unresolved_instances"] == COUNT, report
    for task in tasks:
        status = json.loads((tmp_path / "noop" / task["instance_id"] / "report.json").read_text())
        tests = status[task["instance_id"]]["tests_status"]
        assert sorted(tests["FAIL_TO_PASS"]["failure"]) == sorted(task["FAIL_TO_PASS"])
        assert sorted(tests["PASS_TO_PASS"]["success"]) == sorted(task["PASS_TO_PASS"])


def test_git_history_in_the_task_container_holds_no_trace_of_the_original(made):
    path, _ = made
    for task in rows(path):
        file = task["forage"]["file"]
        history = docker_sh(
            task["image"],
            "cd /testbed && git status --porcelain && echo COMMITS=$(git rev-list --all | wc -l) "
            "&& git log -p --all && git cat-file --batch-all-objects --batch && git rev-parse HEAD",
        )
        assert history.startswith("COMMITS=1\n"), "more than one commit, or the working tree is not the base"
        assert history.rstrip().endswith(task["base_commit"])
        # The original file: the bug's file with the gold patch applied (in a copy, outside the repository).
        sep = "\n===ORIGINAL===\n"
        both = docker_sh(
            task["image"],
            f"cat /testbed/{file}; cp -r /testbed /tmp/o && cd /tmp/o && git apply - && printf '{sep}' && cat {file}",
            stdin=task["patch"],
        )
        mutated, original = both.split(sep)
        assert mutated != original
        assert original not in history, f"{task['instance_id']}: git holds the original {file}"
        for line in fix_lines(task["patch"], mutated):
            assert line not in history, f"{task['instance_id']}: git shows the original code {line!r}"
        assert mutated in history  # the base commit holds the bug


def test_same_seed_gives_the_same_tasks_with_any_number_of_jobs(made, tmp_path):
    path, _ = made
    again = tmp_path / "again.jsonl"
    proc = cli("forage", "tasks", "--image", IMAGE, "-n", str(COUNT), "--seed", str(SEED), "-o", str(again), "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == path.read_bytes()


def test_bad_input_is_one_clear_line(tmp_path, docker_client):
    proc = cli("forage", "tasks", "--image", "cwm-agent/no-such-image:1", "-o", str(tmp_path / "t.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: image cwm-agent/no-such-image:1 is not on this Docker engine: build or pull it first."
    )
    assert not (tmp_path / "t.jsonl").exists()
    proc = cli("forage", "tasks", "--image", IMAGE, "-o", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("forage", "tasks", "--image", IMAGE, "--test-cmd", "false", "-o", str(tmp_path / "t.jsonl"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: `false` did not run under pytest") and "--test-cmd" in proc.stderr
    assert not (tmp_path / "t.jsonl").exists()


def test_ctrl_c_removes_the_container_and_writes_no_tasks_file(local_images, tmp_path):
    script = Path(sys.executable).parent / "cwm-agent"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cwm_agent.cli"]
    out = tmp_path / "tasks.jsonl"
    proc = subprocess.Popen(
        [*cmd, "forage", "tasks", "--image", IMAGE, "-n", "50", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip

    def containers() -> list[str]:
        found = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={OWNER_PID_LABEL}={proc.pid}"], capture_output=True, text=True
        )
        return found.stdout.split()

    def task_images() -> set[str]:
        found = subprocess.run(
            ["docker", "images", "--format", "{{.Repository}}", "--filter", "label=io.cwm-agent.forage-source"],
            capture_output=True, text=True,
        )  # fmt: skip
        return set(found.stdout.split())

    before = task_images()
    deadline = time.monotonic() + 120
    while not containers() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert containers(), "forage tasks started no container"
    time.sleep(2)  # into the work (baseline or validation; 0.3 to 12 s were all tried)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: containers removed, no tasks file written." in err and "Traceback" not in err
    assert containers() == []
    assert not out.exists()
    assert task_images() <= before, "images of tasks that were never written are left"
