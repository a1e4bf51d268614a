"""The run folder without Docker or a model: manifest differences, the lock, reading results back, item order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwm_agent.agent.task import Task
from cwm_agent.runs.batch import round_robin
from cwm_agent.runs.folder import DatasetInfo, Manifest, ModelInfo, RunFolder, RunFolderError, differences
from cwm_agent.runs.work import ItemRecord, WorkItem, item_id_for


def manifest(**changes) -> Manifest:
    base = Manifest(
        run_ids=["a"],
        dataset=DatasetInfo(source="/data/verified.jsonl", rows={"x__y-1": "h1", "x__y-2": "h2"}),
        model=ModelInfo(id="cwm", urls=["http://127.0.0.1:8000/v1"]),
        config={"agent": {"max_turns": 128}, "model": {"url": "http://127.0.0.1:8000/v1", "model": "cwm"}},
    )
    return base.model_copy(update=changes)


def test_item_ids_keep_the_single_rollout_layout():
    assert item_id_for("repo__x-1") == "repo__x-1"
    assert item_id_for("repo__x-1", "patch", 3) == "repo__x-1.patch-3"
    assert item_id_for("repo__x-1", "test", 0) == "repo__x-1.test-0"


def test_rollouts_are_scheduled_round_robin_across_instances():
    task = Task(task_id="t", problem_statement="p")
    items = [
        WorkItem(item_id=item_id_for(i, kind, k), instance_id=i, kind=kind, rollout=k, task=task)
        for i in ("a", "b", "c")
        for kind, count in (("patch", 2), ("test", 1))
        for k in range(count)
    ]
    order = [it.item_id for it in round_robin(items)]
    assert order == ["a", "b", "c", "a.test-0", "b.test-0", "c.test-0", "a.patch-1", "b.patch-1", "c.patch-1"]


def test_a_resume_with_other_settings_names_the_difference():
    same = manifest(config={"agent": {"max_turns": 128}, "model": {"url": "http://elsewhere:9/v1", "model": "cwm"}})
    assert differences(manifest(), same) == []  # another URL for the same model is the same run
    assert differences(manifest(), manifest(model=ModelInfo(id="other"))) == ["model 'cwm' -> 'other'"]
    turns = manifest(config={"agent": {"max_turns": 3}, "model": {"model": "cwm"}})
    assert differences(manifest(), turns) == ["agent.max_turns 128 -> 3"]
    assert differences(manifest(), manifest(rollouts=4)) == ["--rollouts 1 -> 4"]
    other_data = manifest(dataset=DatasetInfo(source="/data/lite.jsonl"))
    assert differences(manifest(), other_data) == ["dataset /data/verified.jsonl -> /data/lite.jsonl"]
    changed_row = manifest(dataset=DatasetInfo(source="/data/verified.jsonl", rows={"x__y-2": "other"}))
    assert differences(manifest(), changed_row) == ["dataset row of x__y-2 changed"]
    subset = manifest(dataset=DatasetInfo(source="/data/verified.jsonl", rows={"x__y-1": "h1", "x__y-3": "h3"}))
    assert differences(manifest(), subset) == []  # another selection of the same dataset continues the folder


def test_open_refuses_a_different_run_in_one_line_and_allow_mixed_records_it(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.open(manifest())
    folder.close()
    with pytest.raises(RunFolderError) as caught:
        folder.open(manifest(rollouts=2))
    message = str(caught.value)
    assert "\n" not in message and "--rollouts 1 -> 2" in message and "--allow-mixed" in message
    assert json.loads((tmp_path / "run" / "run.json").read_text())["rollouts"] == 1
    written, diffs = folder.open(manifest(rollouts=2, run_ids=["b"]), allow_mixed=True)
    folder.close()
    assert diffs == ["--rollouts 1 -> 2"]
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["mixed"] is True and saved["rollouts"] == 1 and saved["run_ids"] == ["a", "b"]


HOLDER = """
import sys, time
from pathlib import Path
from cwm_agent.runs.folder import RunFolder
from tests.test_runs_folder import manifest
folder = RunFolder(Path(sys.argv[1]))
folder.open(manifest())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_kill_9_frees_the_lock(tmp_path):
    root = Path(__file__).resolve().parent.parent
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run")], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as caught:
            RunFolder(tmp_path / "run").open(manifest())
        assert f"pid {holder.pid}" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 5
    folder = RunFolder(tmp_path / "run")
    while True:  # the kernel drops a dead process's flock
        try:
            folder.open(manifest())
            break
        except RunFolderError:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)
    folder.close()


def test_results_read_back_skip_a_torn_line_and_read_the_older_layout(tmp_path):
    folder = RunFolder(tmp_path)
    old = {"instance_id": "a__b-1", "status": "submitted", "submitted": True, "turns": 4, "context_tokens": 9}
    new = ItemRecord(instance_id="a__b-2", item_id="a__b-2.patch-1", rollout=1, status="turn_limit")
    (tmp_path / "results.jsonl").write_text(
        json.dumps(old) + "\n" + new.model_dump_json() + "\n" + '{"instance_id": "a'
    )
    records = folder.read_results()
    assert list(records) == ["a__b-1", "a__b-2.patch-1"]
    assert records["a__b-1"].graded and records["a__b-1"].kind == "patch" and records["a__b-1"].rollout == 0
    assert records["a__b-2.patch-1"].status == "turn_limit" and not records["a__b-2.patch-1"].errored
