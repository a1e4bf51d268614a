"""Run folders as `report`, `stats` and `show` read them, without Docker: both results layouts,
item ids, a hostile instance id, and an HTML report written from recorded trajectories."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from test_show import write_trajectory

from cwm_agent.reports.html import page_name
from cwm_agent.reports.runfolder import load_run, split_item_id


def cwm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cwm_agent.cli", *args], capture_output=True, text=True,
                          env={"COLUMNS": "160", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip


def old_layout_run(root: Path) -> Path:
    """A folder as `swebench run` wrote it before work items: one line per instance, no run.json."""
    run = root / "old"
    (run / "trajectories").mkdir(parents=True)
    lines = [
        {"instance_id": "acme__calc-1", "status": "submitted", "submitted": True, "turns": 2,
         "context_tokens": 900, "completion_tokens": 120, "elapsed": 3.5},
        {"instance_id": "acme__calc-2", "status": "model_error", "detail": "HTTP 400", "elapsed": 0.4},
        {"instance_id": "other__lib-7", "status": "turn_limit", "turns": 2, "completion_tokens": 80, "elapsed": 9.0},
    ]  # fmt: skip
    (run / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"instance_id": "torn')
    for line in lines:
        write_trajectory(run / "trajectories" / f"{line['instance_id']}.jsonl")
    eval_dir = run / "eval" / "acme__calc-1"
    eval_dir.mkdir(parents=True)
    (eval_dir / "result.json").write_text('{"instance_id": "acme__calc-1", "outcome": "resolved"}')
    (run / "eval" / "report.json").write_text(json.dumps({"total_instances": 5, "resolved_instances": 1}))
    return run


def test_the_old_results_layout_reads_as_patch_rollout_0(tmp_path):
    run = load_run(old_layout_run(tmp_path))
    assert [i.item_id for i in run.items] == ["acme__calc-1", "acme__calc-2", "other__lib-7"]
    first = run.items[0]
    assert first.kind == "patch" and first.rollout == 0 and first.result.graded
    assert first.result.tokens.completion == 120 and first.result.tokens.context == 900
    assert first.resolved is True and run.items[1].resolved is None
    assert run.dataset_size() == 5  # from the evaluation's report: the dataset had 5 instances
    stats = json.loads(cwm("swebench", "stats", str(run.path), "--json").stdout)
    assert stats["dataset"] == 5 and stats["submitted"] == 1 and stats["resolved"] == 1
    assert stats["endings"] == {"patch": {"submitted": 1, "model_error": 1, "turn_limit": 1}}
    assert [r["repo"] for r in stats["repos"]] == ["acme/calc", "other/lib"]
    assert stats["format_errors"] == 3  # one per recorded trajectory
    assert stats["pass_at_1"] is None  # one rollout


def test_report_from_recorded_trajectories(tmp_path):
    run = old_layout_run(tmp_path)
    manifest = {"dataset": {"source": "x.jsonl", "instance_count": 5}, "config": {"model": {"api_key": "sk-secret"}}}
    (run / "run.json").write_text(json.dumps(manifest))
    proc = cwm("report", str(run), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    pages = sorted(p.name for p in (tmp_path / "out" / "items").iterdir())
    assert pages == ["acme__calc-1.html", "acme__calc-2.html", "other__lib-7.html"]
    index = (tmp_path / "out" / "index.html").read_text()
    assert 'href="items/acme__calc-1.html"' in index and "<svg" in index
    assert "run.json" in index and "sk-secret" not in index  # the manifest is shown, its key is not
    page = (tmp_path / "out" / "items" / "acme__calc-1.html").read_text()
    assert "reply (not a valid call)" in page and "MissingThinkEnd: close your thinking" in page
    assert page.count("MissingThinkEnd: close your thinking") == 2  # the turn's summary line and its body
    assert "Working-tree diff (nothing submitted)" in page
    assert (tmp_path / "out" / "assets" / "report.js").exists() and (
        tmp_path / "out" / "assets" / "report.css"
    ).exists()


def test_item_ids_and_page_names():
    assert split_item_id("repo__x-1") == ("repo__x-1", "patch", 0)
    assert split_item_id("repo__x-1.patch-3") == ("repo__x-1", "patch", 3)
    assert split_item_id("repo__x-1.test-0") == ("repo__x-1", "test", 0)
    assert split_item_id("weird.name-2") == ("weird.name-2", "patch", 0)
    assert page_name("../../etc/passwd") == "_.._etc_passwd.html"
    assert page_name('a"<b>') == "a__b_.html"


def test_stats_on_what_is_not_a_run_folder_and_a_report_that_cannot_be_written(tmp_path):
    run = old_layout_run(tmp_path)
    (tmp_path / "a-file").write_text("x")
    proc = cwm("report", str(run), "-o", str(tmp_path / "a-file" / "report"))
    assert proc.returncode == 2 and "cannot write the report" in proc.stderr and proc.stderr.count("\n") == 1
    (tmp_path / "plain").mkdir()
    proc = cwm("swebench", "stats", str(tmp_path / "plain"))
    assert proc.returncode == 2 and "is not a run folder" in proc.stderr and proc.stderr.count("\n") == 1


def test_follow_waits_for_an_episode_that_has_not_started(tmp_path):
    run = old_layout_run(tmp_path)
    rows = {"acme__calc-1": "h1", "acme__later-9": "h2"}
    (run / "run.json").write_text(json.dumps({"dataset": {"source": "x.jsonl", "instance_count": 2, "rows": rows}}))
    early = cwm("show", str(run), "acme__later-9")
    assert early.returncode == 2 and "has not started yet" in early.stderr
    typo = cwm("show", str(run), "acme__typo-1", "--follow")
    assert typo.returncode == 2 and "has no trajectory of acme__typo-1" in typo.stderr
    proc = subprocess.Popen([sys.executable, "-m", "cwm_agent.cli", "show", str(run), "acme__later-9", "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"COLUMNS": "160", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "waiting for it" in proc.stderr.readline()
    write_trajectory(run / "trajectories" / "acme__later-9.jsonl")  # the episode starts (and here, ends)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Fix the bug in calc.py" in out and "turn_limit" in out


def two_rollout_run(root: Path, name: str, resolved: dict[str, set[str]]) -> Path:
    """A run of two patch rollouts per instance; `resolved[item_id]` is what each rollout's evaluation says."""
    run = root / name
    (run / "trajectories").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"rollouts": 2}))
    lines = []
    for instance in ("acme__calc-1", "acme__calc-2"):
        for rollout in (0, 1):
            item_id = instance if rollout == 0 else f"{instance}.patch-{rollout}"
            lines.append({"instance_id": instance, "kind": "patch", "rollout": rollout, "item_id": item_id,
                          "status": "submitted", "graded": True, "submission": "diff", "turns": 2})  # fmt: skip
            write_trajectory(run / "trajectories" / f"{item_id}.jsonl")
            root_of_rollout = run / "eval" / (f"rollout-{rollout}" if rollout else "")
            (root_of_rollout / instance).mkdir(parents=True)
            outcome = "resolved" if item_id in resolved else "unresolved"
            (root_of_rollout / instance / "result.json").write_text(
                json.dumps({"instance_id": instance, "outcome": outcome})
            )
    (run / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def section_ids(index: str, section: str) -> list[str]:
    """The instance ids listed in one section of a comparison page."""
    body = index.split(f'<section id="{section}">')[1].split("</section>")[0]
    return re.findall(r"<tr><td>([^<]+)</td>", body)


def test_compare_chooses_the_rollout_it_compares(tmp_path):
    # Rollout 0: A resolves calc-1, B resolves nothing. Rollout 1: A resolves nothing, B resolves calc-2.
    run_a = two_rollout_run(tmp_path, "a", {"acme__calc-1"})
    run_b = two_rollout_run(tmp_path, "b", {"acme__calc-2.patch-1"})
    expected = {0: (["acme__calc-1"], []), 1: ([], ["acme__calc-2"])}
    for rollout, (only_a, only_b) in expected.items():
        out = tmp_path / f"compare-{rollout}"
        proc = cwm("report", str(run_a), "--compare", str(run_b), "--rollout", str(rollout), "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        index = (out / "index.html").read_text()
        assert section_ids(index, "only-a") == only_a and section_ids(index, "only-b") == only_b, rollout
        assert f"Every instance (rollout {rollout})" in index
    for args, words in [
        (("--compare", str(run_b), "--rollout", "2"), "--rollout 2: a has 2 patch rollout(s) and b 2"),
        (("--rollout", "1"), "--rollout chooses what --compare compares"),
    ]:
        proc = cwm("report", str(run_a), *args, "-o", str(tmp_path / "never"))
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert not (tmp_path / "never").exists()
