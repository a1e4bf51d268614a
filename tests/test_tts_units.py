"""The pure parts of test-time scaling: patch normalisation, a generated test's checks and verdict,
regression-file choice, the run folder read back, the strategies' rules, and plug-in loading."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from cwm_agent.tts.candidates import Candidate, InstanceCandidates, RunFolderError, load_candidates
from cwm_agent.tts.execute import Execution, PatchResult
from cwm_agent.tts.patches import is_empty, normalise, patch_id, touched_files
from cwm_agent.tts.regression import related_test_files
from cwm_agent.tts.strategies import STRATEGIES, Choice, StrategyError, load_strategy
from cwm_agent.tts.testgen import source_from_submission, static_problem, verdict

PATCH = """diff --git a/pkg/mod.py b/pkg/mod.py
index 1111111..2222222 100644
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -10,3 +10,3 @@ def f(x):
     y = x
-    return y
+    return abs(y)
"""


def test_whitespace_only_differences_are_one_patch_indentation_is_not():
    spaced = PATCH.replace("index 1111111..2222222", "index 1111111..3333333").replace(
        "+    return abs(y)", "+    return  abs(y)   \n+"
    )
    assert patch_id(spaced) == patch_id(PATCH)
    assert patch_id(PATCH.replace("+    return abs(y)", "+        return abs(y)")) != patch_id(PATCH)
    assert patch_id(PATCH.replace("abs(y)", "abs(x)")) != patch_id(PATCH)
    assert "index" not in normalise(PATCH)
    assert is_empty("") and is_empty(" \n") and is_empty(None) and not is_empty(PATCH)
    assert touched_files(PATCH) == ["pkg/mod.py"]


def test_generated_test_checks_and_verdicts():
    good = "print('Issue reproduced')\nprint('Issue resolved')\n"
    assert static_problem(good) is None
    assert static_problem("  ") == "empty test"
    assert "never prints 'Issue resolved'" in static_problem("print('Issue reproduced')")
    assert static_problem("if x\n print('Issue reproduced', 'Issue resolved')").startswith("syntax error")
    assert verdict("Issue reproduced\n") == "reproduced"
    assert verdict("... Issue resolved") == "resolved"
    assert verdict("Issue reproduced\nOther issues") == "other"
    assert verdict("Issue reproduced\nIssue resolved") == "other"
    assert verdict("Traceback ...") == "other"


def test_a_test_submission_is_its_source_or_a_diff_adding_test_issue_py():
    source = "import x\nprint('Issue reproduced')\n"
    assert source_from_submission(source) == source
    diff = (
        "diff --git a/test_issue.py b/test_issue.py\nnew file mode 100644\n--- /dev/null\n+++ b/test_issue.py\n"
        "@@ -0,0 +1,2 @@\n+import x\n+print('Issue reproduced')\n"
    )
    assert source_from_submission(diff) == source
    assert source_from_submission(None) is None
    assert source_from_submission(PATCH) is None  # a diff of something else


def test_regression_files_follow_the_touched_modules():
    files = ["test_six.py", "tests/test_more.py", "tests/test_recipes.py", "pkg/tests/test_mod_extra.py", "setup.py"]
    assert related_test_files(files, ["more_itertools/more.py"])[0] == ["tests/test_more.py"]
    assert related_test_files(files, ["pkg/mod.py"])[0] == ["pkg/tests/test_mod_extra.py"]
    assert related_test_files(["test_inflection.py"], ["inflection/__init__.py"])[0] == ["test_inflection.py"]
    chosen, how = related_test_files(files, ["docs/conf.py"])
    assert chosen == sorted(f for f in files if f != "setup.py") and "whole suite" in how
    django = ["tests/auth_tests/test_forms.py", "tests/forms_tests/tests/test_input_formats.py",
              "tests/admin_views/tests.py", "tests/model_forms/tests.py"]  # fmt: skip
    assert related_test_files(django, ["django/contrib/auth/forms.py"])[0] == django[:2]
    many = [f"tests/test_{i}.py" for i in range(60)]
    assert related_test_files(many, ["src/other.py"]) == ([], related_test_files(many, ["src/other.py"])[1])


def _cand(pid: str, rollouts: list[int], tokens: int) -> Candidate:
    return Candidate(pid, f"patch {pid}", rollouts, tokens, ["a.py"])


def _instance(*cands: Candidate) -> InstanceCandidates:
    return InstanceCandidates("x", candidates=list(cands))


def _execution(scores: dict[str, tuple[bool, int, int]]) -> Execution:
    """pid -> (applied, regression tests passed of 3, top generated tests resolved of 2)."""
    ex = Execution("x", regression_tests=["r1", "r2", "r3"], kept=["g1", "g2"], top=["g1", "g2"])
    for pid, (applied, reg, gen) in scores.items():
        ex.results[pid] = PatchResult(
            pid,
            applied,
            {f"r{i + 1}": "PASSED" if i < reg else "FAILED" for i in range(3)},
            {f"g{i + 1}": "resolved" if i < gen else "reproduced" for i in range(2)},
        )
    return ex


def test_cwm_most_tests_then_majority_then_fewest_tokens():
    cwm = STRATEGIES["cwm"]
    a, b, c = _cand("a", [0, 1, 2], 100), _cand("b", [3], 900), _cand("c", [4], 500)
    # the most tests wins over votes and tokens
    assert (
        cwm(_instance(a, b, c), _execution({"a": (True, 3, 0), "b": (True, 3, 2), "c": (True, 2, 2)})).patch_id == "b"
    )
    # tied on tests: the majority patch
    choice = cwm(_instance(a, b, c), _execution({"a": (True, 3, 1), "b": (True, 3, 1), "c": (True, 3, 1)}))
    assert choice.patch_id == "a" and "majority" in choice.reason
    # tied on tests and votes: the fewest tokens
    choice = cwm(_instance(b, c), _execution({"b": (True, 3, 1), "c": (True, 3, 1)}))
    assert choice.patch_id == "c" and "fewest tokens (500)" in choice.reason
    # a patch that does not apply ranks below any that does, even with more votes
    assert cwm(_instance(a, b), _execution({"a": (False, 0, 0), "b": (True, 0, 0)})).patch_id == "b"
    # nothing to choose: an empty prediction
    assert cwm(_instance(), _execution({})).patch_id is None
    # no execution (e.g. no image): majority, and the why says so
    failed = Execution("x", error="no image")
    choice = cwm(_instance(a, b), failed)
    assert choice.patch_id == "a" and choice.reason.startswith("majority fallback (no image)")


def test_majority_votes_then_tokens():
    majority = STRATEGIES["majority"]
    a, b, c = _cand("a", [0, 1], 800), _cand("b", [2, 3], 300), _cand("c", [4, 5, 6], 900)
    assert majority(_instance(a, b, c), None).patch_id == "c"
    assert majority(_instance(a, b), None).patch_id == "b"
    assert majority(_instance(), None) == Choice(None, "no rollout produced a non-empty patch")


def pick_last(instance, execution):
    return Choice(instance.candidates[-1].patch_id if instance.candidates else None, "the last")


pick_last.needs_execution = False


def test_a_plug_in_strategy_loads_by_module_and_attribute():
    strategy = load_strategy(f"{__name__}:pick_last")
    assert strategy.name == "pick_last" and strategy.needs_execution is False
    assert strategy(_instance(_cand("a", [0], 1), _cand("b", [1], 1)), None).patch_id == "b"
    with pytest.raises(StrategyError, match="unknown; use majority, cwm"):
        load_strategy("best")
    with pytest.raises(StrategyError, match="cannot load it"):
        load_strategy("no_such_module_here:x")


def test_the_run_folder_is_read_back(tmp_path: Path):
    (tmp_path / "preds").mkdir()
    for k, patch in enumerate([PATCH, "", PATCH.replace("abs(y)", " abs(y) ")]):
        row = {"instance_id": "i-1", "model_name_or_path": "m", "model_patch": patch}
        (tmp_path / "preds" / f"rollout-{k}.jsonl").write_text(json.dumps(row) + "\n")
    results = [
        {"instance_id": "i-1", "kind": "patch", "rollout": k, "tokens": {"context": 100 * (3 - k)}} for k in range(3)
    ] + [
        {"instance_id": "i-1", "kind": "test", "rollout": 0, "graded": True, "submission": "print('Issue resolved')"},
        {"instance_id": "i-1", "kind": "test", "rollout": 1, "graded": False, "submission": "ungraded"},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results) + '{"torn')
    (inst,) = load_candidates(tmp_path)
    assert [c.rollouts for c in inst.candidates] == [[0, 2]]
    assert inst.candidates[0].tokens == 100 and inst.candidates[0].patch == PATCH
    assert [t.rollouts for t in inst.tests] == [[0]] and inst.test_rollouts == 2
    with pytest.raises(RunFolderError, match="not in the run: nope"):
        load_candidates(tmp_path, ["nope"])
    with pytest.raises(RunFolderError, match="no such directory"):
        load_candidates(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="no preds"):
        load_candidates(tmp_path / "preds")


def test_a_folder_a_run_is_still_writing_is_refused(tmp_path: Path):
    from cwm_agent.runs.folder import RunLock

    (tmp_path / "preds.jsonl").write_text(json.dumps({"instance_id": "i", "model_patch": PATCH}) + "\n")
    lock = RunLock(tmp_path / "run.lock")
    lock.acquire()
    try:
        with pytest.raises(RunFolderError, match=f"a run \\(pid {os.getpid()}\\) is still writing it"):
            load_candidates(tmp_path)
    finally:
        lock.release()
    assert [i.instance_id for i in load_candidates(tmp_path)] == ["i"]  # a lock left by an ended run: fine


class ReadsTheIssue:
    name = "reads-the-issue"
    needs_execution = False
    needs_problem_statement = True

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, instance, execution):
        self.seen[instance.instance_id] = instance.problem_statement
        return Choice(instance.candidates[0].patch_id, "first")


def test_a_plug_in_gets_the_issue_text_and_its_choice_is_written_with_why(tmp_path: Path):
    from cwm_agent.swebench.dataset import load_instances
    from cwm_agent.swebench.local import INSTANCES_FILE
    from cwm_agent.tts.select import select, write_selection

    (inst,) = load_instances(INSTANCES_FILE, instance_ids=["cwm-local__six-1"])
    (tmp_path / "preds.jsonl").write_text(
        json.dumps({"instance_id": inst.instance_id, "model_patch": inst.patch}) + "\n"
    )
    (tmp_path / "run.json").write_text(json.dumps({"dataset": {"source": str(INSTANCES_FILE)}, "model": {"id": "m"}}))
    strategy = ReadsTheIssue()
    selections, stats = select(tmp_path, [strategy])
    assert strategy.seen == {inst.instance_id: inst.problem_statement} and stats.containers == 0
    why = write_selection(selections["reads-the-issue"], tmp_path / "out" / "preds.jsonl")
    assert why.name == "preds.why.jsonl"
    (pred,) = [json.loads(line) for line in (tmp_path / "out" / "preds.jsonl").read_text().splitlines()]
    assert pred == {"instance_id": inst.instance_id, "model_name_or_path": "m+tts-reads-the-issue",
                    "model_patch": inst.patch}  # fmt: skip
    (record,) = [json.loads(line) for line in why.read_text().splitlines()]
    assert record["reason"] == "first" and record["rollouts"] == [0] and "execution" not in record


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
