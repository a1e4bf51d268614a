"""Candidate execution in real Docker: a hanging generated test, the shell after it, and the cache."""

from __future__ import annotations

import json

import pytest

from cwm_agent.tts.candidates import Candidate, GeneratedTest, InstanceCandidates
from cwm_agent.tts.execute import BASE, ExecOptions, Executor
from cwm_agent.tts.patches import patch_id, touched_files
from cwm_agent.tts.testgen import generated_test_id

pytestmark = pytest.mark.docker

INFLECTION = "cwm-local__inflection-1"
HANGS = "import time\ntime.sleep(600)\nprint('Issue reproduced')  # never: 'Issue resolved'\n"
GOOD = "import inflection\nprint('Issue resolved' if inflection.ordinal(-1) == 'st' else 'Issue reproduced')\n"


def test_a_hanging_test_is_dropped_and_the_tests_after_it_still_run_in_the_repos_env(local_images, tmp_path):
    instance = next(i for i in local_images if i.instance_id == INFLECTION)
    tests = [GeneratedTest(generated_test_id(s), s, [k]) for k, s in enumerate([HANGS, GOOD])]
    cand = Candidate(patch_id(instance.patch), instance.patch, [0], 10, touched_files(instance.patch))
    inst = InstanceCandidates(INFLECTION, candidates=[cand], tests=tests)
    options = ExecOptions(workers=1, test_timeout=3, regression=False, run_id="tts-test-exec")

    executor = Executor(tmp_path, options)
    ex = executor.execute({INFLECTION: instance}, [inst])[INFLECTION]
    assert not ex.error
    hung, good = ex.validation
    assert not hung.kept and "timed out after 3 s" in hung.reason
    assert good.kept  # the shell came back (or a new one started) with the repository's python
    assert ex.results[cand.patch_id].generated == {good.test_id: "resolved"}
    assert executor.stats.containers == 2  # the unpatched repository and the one patch

    cached = [json.loads(line) for line in (tmp_path / "tts" / "cache.jsonl").read_text().splitlines()]
    assert {(c["patch_id"], c["test_id"]) for c in cached} == {
        (BASE, tests[0].test_id), (BASE, tests[1].test_id), (cand.patch_id, "apply"), (cand.patch_id, good.test_id)
    }  # fmt: skip
    again = Executor(tmp_path, options)
    assert again.execute({INFLECTION: instance}, [inst])[INFLECTION].results == ex.results
    assert again.stats.containers == 0
