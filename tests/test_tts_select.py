"""`swebench select` and `swebench tts-report` end to end: real subprocesses, real Docker, local instances.

The run folder holds scripted rollouts with known outcomes (tests/tts_scenario.py): correct, wrong,
non-applying and empty patches; good, wrong, non-reproducing and broken generated tests. Containers
a command starts are counted from Docker's own event stream (by the owner-pid label every sandbox
carries), so "starts no container" is what the engine saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tts_scenario import (
    INFL_GOLD,
    INFL_WRONG,
    INFLECTION,
    MORE,
    MORE_ALT,
    MORE_BREAKING,
    RESOLVED,
    SEED,
    SIX,
    SIX_GOLD,
    TESTS,
    K,
    TTSPolicy,
)

from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.sandbox.base import OWNER_PID_LABEL
from cwm_agent.swebench.local import INSTANCES_FILE
from cwm_agent.tts.patches import patch_id
from cwm_agent.tts.report import rollout_eval_dir

pytestmark = pytest.mark.docker
_launched: list[int] = []


def cli() -> list[str]:
    script = Path(sys.executable).parent / "cwm-agent"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]


def swebench(*args: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cwm-agent swebench ARGS`; (the result, containers it created according to Docker's events).

    The events are watched while the command runs: the engine keeps only the last few hundred."""
    watch = subprocess.Popen(
        ["docker", "events", "--filter", "type=container", "--filter", "event=create",
         "--format", "{{index .Actor.Attributes \"" + OWNER_PID_LABEL + "\"}}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)  # the watcher is subscribed before the command starts
    try:
        proc = subprocess.Popen([*cli(), "swebench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})  # fmt: skip
        _launched.append(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"swebench {' '.join(args)} ran over {timeout}s:\n{out}\n{err}")
        time.sleep(0.5)
    finally:
        watch.terminate()
    owners = watch.communicate()[0].split()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), owners.count(str(proc.pid))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def no_container_left():
    yield
    left = []
    for pid in _launched:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={OWNER_PID_LABEL}={pid}"],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        left += ids
        for cid in ids:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    assert not left, f"containers left behind: {left}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, local_images) -> Path:
    """`swebench run --rollouts 7 --test-rollouts 5` with the scripted model playing the scenario."""
    out = tmp_path_factory.mktemp("tts") / "run"
    with ScriptedServer(policy=TTSPolicy(local_images)) as server:
        result, _ = swebench(
            "run", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--workers", "4",
            "--model-url", server.url, "--rollouts", str(K), "--test-rollouts", str(max(map(len, TESTS.values()))),
            "--seed", str(SEED), "-c", "agent.max_turns=5",
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def ids(preds_path: Path) -> dict[str, str | None]:
    """instance -> the normalised id of its predicted patch (None: empty)."""
    return {p["instance_id"]: patch_id(p["model_patch"]) if p["model_patch"] else None for p in lines(preds_path)}


@pytest.fixture(scope="module")
def cwm_select(run_dir):
    """The first `select --strategy cwm`: executes everything (and fills the cache)."""
    preds = run_dir / "sel" / "cwm.jsonl"
    result, created = swebench("select", "--run", str(run_dir), "--strategy", "cwm", "-o", str(preds), "-w", "2")
    assert result.returncode == 0, result.stderr
    return preds, result, created


def test_cwm_picks_a_correct_patch_and_breaks_ties_by_majority_then_tokens(cwm_select):
    preds_path, result, created = cwm_select
    preds = ids(preds_path)
    why = {w["instance_id"]: w for w in lines(preds_path.with_name("cwm.why.jsonl"))}
    assert set(preds) == {INFLECTION, SIX, MORE}
    assert all(p["model_name_or_path"].endswith("+tts-cwm") for p in lines(preds_path))
    # inflection: the wrong patch is the majority (3 of 7), but only the gold one passes the good test.
    assert preds[INFLECTION] == patch_id(INFL_GOLD)
    assert why[INFLECTION]["rollouts"] == [3, 4]  # whitespace-only variant merged with it
    assert why[INFLECTION]["scores"][why[INFLECTION]["patch_id"]]["generated"] == 1
    # six: no generated test kept; three patches pass every regression test: the majority one wins.
    assert preds[SIX] == patch_id(SIX_GOLD)
    assert "the majority patch (2 rollouts)" in why[SIX]["reason"]
    # more-itertools: two correct patches tie on tests and on votes: the one with fewer tokens wins,
    # and the majority patch (3 rollouts) loses because it breaks the existing tests.
    assert preds[MORE] == patch_id(MORE_ALT)
    assert "the fewest tokens" in why[MORE]["reason"]
    breaking = [pid for pid, s in why[MORE]["scores"].items() if s["votes"] == 3]
    assert why[MORE]["scores"][breaking[0]]["regression"] < why[MORE]["execution"]["regression"]["tests"]
    # one container per distinct patch plus one for the unpatched repository, per instance
    assert created == 3 + 3 + 3 + 3, result.stdout


def test_generated_tests_are_kept_only_when_they_reproduce_and_each_drop_says_why(cwm_select):
    preds_path, _, _ = cwm_select
    why = {w["instance_id"]: w for w in lines(preds_path.with_name("cwm.why.jsonl"))}
    gen = why[INFLECTION]["execution"]["generated"]
    assert gen["written"] == 4 and gen["test_rollouts"] == len(TESTS[INFLECTION])  # two identical tests merged
    assert len(gen["kept"]) == 2  # the good one and the wrong one: both print 'Issue reproduced' unpatched
    reasons = {tuple(d["rollouts"]): d["reason"] for d in gen["dropped"]}
    assert "did not print only 'Issue reproduced'" in reasons[(3,)] and "Issue resolved" in reasons[(3,)]
    assert reasons[(4,)].startswith("syntax error")
    assert gen["top"][0] == gen["kept"][0]  # ties on agreement go to the test more rollouts wrote
    six = {tuple(d["rollouts"]): d["reason"] for d in why[SIX]["execution"]["generated"]["dropped"]}
    assert "Issue resolved" in six[(0,)]
    assert six[(1,)] == "the source never prints 'Issue resolved'"
    assert "Other issues" in six[(2,)]
    assert why[INFLECTION]["execution"]["not_applied"]  # the non-applying patch
    assert why[INFLECTION]["execution"]["regression"]["files"] == ["test_inflection.py"]


def test_a_second_select_starts_no_container(cwm_select, run_dir):
    preds_path, _, _ = cwm_select
    again = run_dir / "sel" / "again.jsonl"
    result, created = swebench("select", "--run", str(run_dir), "-o", str(again), timeout=120)
    assert result.returncode == 0, result.stderr
    assert created == 0
    assert "containers started: 0" in result.stdout
    assert again.read_text() == preds_path.read_text()


def test_majority_picks_the_most_frequent_patch(run_dir):
    preds_path = run_dir / "sel" / "majority.jsonl"
    result, created = swebench("select", "--run", str(run_dir), "--strategy", "majority", "-o", str(preds_path))
    assert result.returncode == 0, result.stderr
    assert created == 0  # majority needs no execution
    assert ids(preds_path) == {INFLECTION: patch_id(INFL_WRONG), SIX: patch_id(SIX_GOLD), MORE: patch_id(MORE_BREAKING)}
    why = {w["instance_id"]: w for w in lines(run_dir / "sel" / "majority.why.jsonl")}
    assert why[INFLECTION]["reason"] == "produced by 3 of 7 rollouts, the most"


def test_report_pass_at_1_and_k_match_the_evaluation_of_each_rollout(cwm_select, run_dir):
    result, _ = swebench("tts-report", "--run", str(run_dir), "-w", "2", "--json", str(run_dir / "r.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "r.json").read_text())
    assert report == json.loads((run_dir / "tts" / "report.json").read_text())
    for iid, resolved in RESOLVED.items():
        evaluated = {
            k for k in range(K)
            if json.loads((rollout_eval_dir(run_dir, k) / iid / "result.json").read_text())["outcome"]
            == "resolved"
        }  # fmt: skip
        assert evaluated == resolved, iid
        entry = report["per_instance"][iid]
        assert entry["pass@1"] == pytest.approx(len(resolved) / K)
        assert entry["pass@k"] is True
        assert entry["strategies"]["cwm"]["resolved"] is True
    assert (run_dir / "eval" / INFLECTION / "result.json").exists()  # rollout 0: the run's own eval/ folder
    assert (run_dir / "tts" / "eval" / "rollout-1" / INFLECTION / "result.json").exists()
    total = report["total"]
    assert total["pass@1"] == pytest.approx(sum(len(r) / K for r in RESOLVED.values()) / 3, abs=1e-4)
    assert total["pass@k"] == 1.0
    assert total["strategies"]["cwm"] == {"accuracy": 1.0, "gap_to_pass@k": 0.0}
    assert total["strategies"]["majority"]["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    stages = report["stages"]
    assert stages["patch_rollouts"]["episodes"] == 3 * K
    assert stages["execution"]["containers"] == 9 and stages["validation"]["containers"] == 3
    assert stages["evaluation"]["evaluations"] == 3 * K
    assert "pass@1" in result.stdout and "gap" in result.stdout


def test_bad_input_is_one_line(tmp_path):
    result, created = swebench("select", "--run", str(tmp_path / "nope"), "-o", str(tmp_path / "p.jsonl"))
    assert result.returncode == 2 and created == 0
    assert result.stderr.strip().startswith("error:") and "no such directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "run").mkdir()
    result, _ = swebench(
        "select", "--run", str(tmp_path / "run"), "--strategy", "best", "-o", str(tmp_path / "p.jsonl")
    )
    assert result.returncode == 2 and "unknown; use majority, cwm" in result.stderr


def test_ctrl_c_removes_every_container_and_writes_no_predictions(run_dir, tmp_path):
    import shutil
    import signal

    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("preds", "preds.jsonl", "results.jsonl", "run.json"):
        (shutil.copytree if (run_dir / name).is_dir() else shutil.copy)(run_dir / name, copy / name)
    proc = subprocess.Popen([*cli(), "swebench", "select", "--run", str(copy), "-o", str(tmp_path / "p.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _launched.append(proc.pid)

    def mine() -> list[str]:
        return subprocess.run(["docker", "ps", "-aq", "--filter", f"label={OWNER_PID_LABEL}={proc.pid}"],
                              capture_output=True, text=True).stdout.split()  # fmt: skip

    deadline = time.monotonic() + 60
    while not mine() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mine(), "select started no container"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "containers removed" in err
    assert not mine()
    assert not (tmp_path / "p.jsonl").exists()  # no partial predictions
