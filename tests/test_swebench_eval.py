"""Evaluation on the local instances in real Docker: every outcome the official harness can give."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from cwm_agent.sandbox.base import OWNER_PID_LABEL
from cwm_agent.swebench.dataset import Prediction
from cwm_agent.swebench.evaluate import EvalOptions, _sandbox_config, evaluate_predictions
from cwm_agent.swebench.local import INSTANCES_FILE

pytestmark = pytest.mark.docker

INFLECTION, SIX, MORE = "cwm-local__inflection-1", "cwm-local__six-1", "cwm-local__more-itertools-1"

DASHERIZE_BREAK = """\
@@ -177,7 +177,7 @@ def dasherize(word: str) -> str:
         'puni-puni'

     \"\"\"
-    return word.replace('_', '-')
+    return word.replace('_', '+')


 def humanize(word: str) -> str:
"""

NOT_APPLYING = """\
diff --git a/six.py b/six.py
--- a/six.py
+++ b/six.py
@@ -1,3 +1,3 @@
-this line is not in six.py
+and neither is this one
 nor this
"""


def _by_id(instances):
    return {i.instance_id: i for i in instances}


def _no_containers_left():
    # Only this process's containers: other suites may be running beside this one.
    label = f"label={OWNER_PID_LABEL}={os.getpid()}"
    out = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout
    assert out.strip() == "", f"containers left behind: {out}"


def test_gold_patches_resolve_every_local_instance(local_images, tmp_path):
    from cwm_agent.cli import app

    out = tmp_path / "gold"
    result = CliRunner().invoke(
        app, ["swebench", "eval", "--gold", "-d", str(INSTANCES_FILE), "-o", str(out), "-w", "2"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "report.json").read_text())
    ids = sorted(i.instance_id for i in local_images)
    assert summary["resolved_ids"] == ids and summary["resolved_instances"] == len(ids)
    assert summary["error_instances"] == 0 and summary["schema_version"] == 2
    for inst in local_images:
        d = out / inst.instance_id
        assert {"report.json", "test_output.txt", "patch.diff", "apply.log", "eval.sh"} <= {p.name for p in d.iterdir()}
        report = json.loads((d / "report.json").read_text())[inst.instance_id]
        assert report["resolved"] and report["patch_successfully_applied"]
        assert sorted(report["tests_status"]["FAIL_TO_PASS"]["success"]) == sorted(inst.FAIL_TO_PASS)
        assert report["tests_status"]["PASS_TO_PASS"]["failure"] == []
        assert (d / "patch.diff").read_text() == inst.patch
        assert ">>>>> Start Test Output" in (d / "test_output.txt").read_text()
    assert "resolved" in result.output
    _no_containers_left()


def test_empty_broken_and_unappliable_patches(local_images, tmp_path):
    inst = _by_id(local_images)
    gold = inst[INFLECTION].patch
    head, sep, rest = gold.partition("+++ b/inflection/__init__.py\n")
    breaking = head + sep + DASHERIZE_BREAK + rest  # fixes ordinal() but breaks dasherize()
    preds = [
        Prediction(instance_id=INFLECTION, model_name_or_path="t", model_patch=breaking),
        Prediction(instance_id=SIX, model_name_or_path="t", model_patch=NOT_APPLYING),
        Prediction(instance_id=MORE, model_name_or_path="t", model_patch=""),
    ]
    summary, results = evaluate_predictions(local_images, preds, tmp_path, workers=2)
    outcome = {r.instance_id: r.outcome for r in results}
    assert outcome == {INFLECTION: "unresolved", SIX: "error", MORE: "empty_patch"}
    assert summary["unresolved_ids"] == [INFLECTION] and summary["error_ids"] == [SIX]
    assert summary["empty_patch_ids"] == [MORE] and summary["resolved_instances"] == 0

    # Unresolved through PASS_TO_PASS: the bug's tests pass, dasherize's fail.
    report = json.loads((tmp_path / INFLECTION / "report.json").read_text())[INFLECTION]
    status = report["tests_status"]
    assert status["FAIL_TO_PASS"]["failure"] == []
    assert status["PASS_TO_PASS"]["failure"] and all("test_dasherize" in t for t in status["PASS_TO_PASS"]["failure"])

    # Error: the apply log shows each official attempt and the failure marker; no report.json.
    apply_log = (tmp_path / SIX / "apply.log").read_text()
    assert "git apply --verbose" in apply_log and "patch --batch --fuzz=5 -p1 -i" in apply_log
    assert ">>>>> Patch Apply Failed" in apply_log
    assert not (tmp_path / SIX / "report.json").exists()
    assert "Patch Apply Failed" in json.loads((tmp_path / SIX / "result.json").read_text())["error"]
    _no_containers_left()


KILL_EVAL_SCRIPT = """\
diff --git a/conftest.py b/conftest.py
new file mode 100644
--- /dev/null
+++ b/conftest.py
@@ -0,0 +1,4 @@
+import os
+import signal
+
+os.kill(os.getppid(), signal.SIGKILL)
"""


def test_a_log_without_test_markers_is_unresolved_as_officially_not_an_error(local_images, tmp_path):
    """The patch applies, then kills the eval script before its end marker: the official harness still
    writes a report (patch_successfully_applied false), so the instance is completed and unresolved."""
    inst = _by_id(local_images)[SIX]
    preds = [Prediction(instance_id=SIX, model_name_or_path="t", model_patch=inst.patch + KILL_EVAL_SCRIPT)]
    summary, (result,) = evaluate_predictions([inst], preds, tmp_path)
    report = json.loads((tmp_path / SIX / "report.json").read_text())[SIX]
    assert report["patch_successfully_applied"] is False and report["resolved"] is False
    assert result.outcome == "unresolved" and "did not reach the tests" in result.error
    assert summary["unresolved_ids"] == [SIX] and summary["completed_instances"] == 1 and summary["error_ids"] == []
    _no_containers_left()


HANG_TESTS = """\
diff --git a/conftest.py b/conftest.py
new file mode 100644
--- /dev/null
+++ b/conftest.py
@@ -0,0 +1,3 @@
+import time
+
+time.sleep(600)
"""


def test_tests_running_past_the_timeout_are_an_error_with_the_log_kept(local_images, tmp_path):
    inst = _by_id(local_images)[SIX]
    preds = [Prediction(instance_id=SIX, model_name_or_path="t", model_patch=inst.patch + HANG_TESTS)]
    summary, (result,) = evaluate_predictions([inst], preds, tmp_path, options=EvalOptions(timeout=3))
    assert result.outcome == "error" and "timed out after 3 seconds" in result.error
    assert 3 <= result.test_run_s < 30
    log = (tmp_path / SIX / "test_output.txt").read_text()
    assert ">>>>> Start Test Output" in log and "Timeout error: 3 seconds exceeded." in log
    assert summary["error_ids"] == [SIX]
    _no_containers_left()


def test_fuzzy_patch_falls_back_to_patch_and_reruns_are_skipped(local_images, tmp_path):
    inst = _by_id(local_images)[SIX]
    # A context line that differs from the file: git apply refuses, `patch --fuzz` applies it.
    fuzzy = inst.patch.replace(" def add_metaclass(metaclass):", " def add_metaclass(meta):").replace(
        "         orig_vars = cls.__dict__.copy()\n", "         orig_vars = dict(cls.__dict__)\n"
    )
    assert fuzzy != inst.patch
    preds = [Prediction(instance_id=SIX, model_name_or_path="t", model_patch=fuzzy)]
    summary, (result,) = evaluate_predictions([inst], preds, tmp_path)
    assert result.outcome == "resolved", (tmp_path / SIX / "apply.log").read_text()
    assert result.apply_command.startswith("patch ")
    assert result.test_run_s > 0 and result.total_s >= result.test_run_s
    # A second run over the same output reuses the finished result instead of evaluating again.
    before = (tmp_path / SIX / "result.json").stat().st_mtime_ns
    _, (again,) = evaluate_predictions([inst], preds, tmp_path)
    assert again.outcome == "resolved" and (tmp_path / SIX / "result.json").stat().st_mtime_ns == before


def test_pip_is_told_there_is_no_index_only_without_network():
    assert _sandbox_config("img", EvalOptions(network="none")).env.get("PIP_NO_INDEX") == "1"
    assert "PIP_NO_INDEX" not in _sandbox_config("img", EvalOptions(network="host")).env
    assert "PIP_NO_INDEX" not in _sandbox_config("img", EvalOptions(network="none", pip_no_index=False)).env


# -- results keyed by what decides them -----------------------------------------------------------


def test_a_changed_patch_is_evaluated_again_and_an_unchanged_one_reused(local_images, tmp_path):
    inst = _by_id(local_images)[SIX]

    def evaluate(patch: str):
        preds = [Prediction(instance_id=SIX, model_name_or_path="t", model_patch=patch)]
        summary, (result,) = evaluate_predictions([inst], preds, tmp_path)
        return summary, result

    summary, gold = evaluate(inst.patch)
    assert gold.outcome == "resolved" and not gold.reused and summary["evaluated_now"] == 1
    # A bogus patch into the folder that holds the gold verdict: graded on its own, never "resolved".
    summary, bogus = evaluate(inst.patch.replace("slots = [slots]", "slots = list(slots)"))
    assert bogus.outcome == "unresolved" and not bogus.reused and summary["resolved_instances"] == 0
    summary, again = evaluate(inst.patch)  # the gold patch once more: its last record is the bogus one's
    assert again.outcome == "resolved" and not again.reused
    summary, reused = evaluate(inst.patch)  # unchanged now: reused, and the summary says so
    assert reused.outcome == "resolved" and reused.reused and summary["reused"] == 1 and summary["evaluated_now"] == 0
    record = json.loads((tmp_path / SIX / "result.json").read_text())
    assert record["key"]["patch_sha256"] == hashlib.sha256(inst.patch.encode()).hexdigest()
    assert {"row_sha256", "harness", "instance_id"} <= set(record["key"])
    # A changed dataset row (another test list) is a changed evaluation, too.
    changed = inst.model_copy(update={"PASS_TO_PASS": inst.PASS_TO_PASS[:-1]})
    _, (row_changed,) = evaluate_predictions(
        [changed], [Prediction(instance_id=SIX, model_name_or_path="t", model_patch=inst.patch)], tmp_path
    )
    assert not row_changed.reused
    _no_containers_left()


def test_a_lone_surrogate_in_one_prediction_errors_that_instance_only(local_images, tmp_path):
    by_id = _by_id(local_images)
    preds = [
        Prediction(instance_id=SIX, model_name_or_path="t", model_patch=by_id[SIX].patch + "\ud800\n"),
        Prediction(instance_id=INFLECTION, model_name_or_path="t", model_patch=by_id[INFLECTION].patch),
    ]
    summary, results = evaluate_predictions([by_id[SIX], by_id[INFLECTION]], preds, tmp_path, workers=2)
    outcome = {r.instance_id: r for r in results}
    assert outcome[SIX].outcome == "error" and "not valid Unicode" in outcome[SIX].error
    assert outcome[INFLECTION].outcome == "resolved" and summary["resolved_ids"] == [INFLECTION]
    _no_containers_left()


def test_a_long_test_log_is_cut_keeping_head_and_tail_and_says_so(local_images, tmp_path):
    inst = _by_id(local_images)[SIX]
    preds = [Prediction(instance_id=SIX, model_name_or_path="t", model_patch=inst.patch)]
    _, (result,) = evaluate_predictions([inst], preds, tmp_path, options=EvalOptions(max_log_bytes=10_000))
    log = (tmp_path / SIX / "test_output.txt").read_text()
    assert log.rstrip().endswith("EvalOptions.max_log_bytes)]") and "bytes cut ...]" in log
    assert "the test log was cut" in result.error and len(log) < 11_000


@pytest.mark.parametrize("where", ["file", "under-a-file", "proc"])
def test_eval_output_that_cannot_be_written_is_one_line(tmp_path, where):
    from cwm_agent.cli import app

    a_file = tmp_path / "f"
    a_file.write_text("keep\n")
    output = {"file": a_file, "under-a-file": a_file / "sub", "proc": "/proc/cwm-no/such"}[where]
    result = CliRunner().invoke(app, ["swebench", "eval", "--gold", "-d", str(INSTANCES_FILE), "-o", str(output)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and str(output) in result.output


# -- interrupted evaluation -----------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["INT", "TERM", "HUP"]
)
def test_a_signal_stops_the_evaluation_at_once_removing_its_containers(local_images, tmp_path, sig, code):
    by_id = _by_id(local_images)
    preds = tmp_path / "preds.jsonl"
    rows = [{"instance_id": SIX, "model_name_or_path": "t", "model_patch": by_id[SIX].patch + HANG_TESTS}]
    rows.append({"instance_id": MORE, "model_name_or_path": "t", "model_patch": ""})  # done at once
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cwm_agent.cli", "swebench", "eval", "-p", str(preds)]
    command += ["-d", str(INSTANCES_FILE), "-o", str(out), "-w", "2", "--instance-ids", f"{SIX},{MORE}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        run_id = None
        while time.monotonic() < deadline:  # until the hanging tests run in their container
            assert proc.poll() is None, proc.communicate()
            running = subprocess.run(
                ["docker", "ps", "-q", "--filter", f"label={OWNER_PID_LABEL}={proc.pid}"],
                capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            if running and (out / SIX / "apply.log").exists():
                break
            time.sleep(0.2)
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10, "the evaluation waited for the running tests"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "containers removed" in stderr
    report = json.loads((out / "report.json").read_text())
    run_id = report["run_id"]
    assert report["interrupted"] is True and run_id in stderr
    assert report["empty_patch_ids"] == [MORE]  # the finished instance is kept
    assert not (out / SIX / "result.json").exists()  # the stopped one recorded nothing
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.cwm-agent.run-id={run_id}"], capture_output=True, text=True
    ).stdout
    assert left.strip() == ""
