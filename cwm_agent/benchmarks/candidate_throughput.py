"""Candidate execution throughput: (patch x test) runs per minute, ours against a fresh container per run.

    python -m cwm_agent.benchmarks.candidate_throughput [--tests 5] [--workers 2] [--regression]

On the local SWE-bench instances, each with the unpatched repository and two candidate patches (the
gold fix, and a patch adding a file), against `--tests` generated tests each (standalone
`test_issue.py` scripts). Ours: `tts.execute.Executor`, one container per (instance, patch) running
all of that patch's tests. The peer: what the official harness does per evaluation, a fresh
container per (patch, test) (create, apply the patch, run the one test, remove). Both use the same
sandbox code (files written through the shell) and the same number of workers; the peer's outcomes must equal ours. With
`--regression`, the repository's related test files run once per patch as one more "test".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cwm_agent.sandbox.base import RunStatus
from cwm_agent.sandbox.docker import DockerSandbox
from cwm_agent.swebench.evaluate import APPLY_COMMANDS
from cwm_agent.swebench.images import REPO_DIR, resolve_image
from cwm_agent.tts.candidates import Candidate, GeneratedTest, InstanceCandidates
from cwm_agent.tts.execute import BASE, ExecOptions, Executor, _put, _sandbox_config
from cwm_agent.tts.patches import patch_id, touched_files
from cwm_agent.tts.regression import suite_command
from cwm_agent.tts.testgen import TEST_FILE, generated_test_id, verdict

_MODULE = {
    "cwm-local/inflection": ("import inflection", "inflection.ordinal(-1) == 'st'"),
    "cwm-local/six": (
        "import six\n"
        "    def fixed():\n"
        "        try:\n"
        "            six.add_metaclass(type)(type('A', (object,), {'__slots__': 'ab'}))\n"
        "        except KeyError:\n"
        "            return False\n"
        "        return True",
        "fixed()",
    ),
    "cwm-local/more-itertools": (
        "from more_itertools import split_at",
        "list(split_at([1, 2, 3, 6, 7], lambda x: x % 3 == 0, maxsplit=1, keep_separator=True))"
        " == [[1, 2], [3], [6, 7]]",
    ),
}
_EXTRA_FILE = (
    "diff --git a/NOTES.txt b/NOTES.txt\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.txt\n@@ -0,0 +1 @@\n+notes\n"
)


def _test_source(repo: str, variant: int) -> str:
    setup, check = _MODULE[repo]
    return (
        f"# variant {variant}\ntry:\n    {setup}\n    ok = {check}\nexcept Exception:\n    print('Other issues')\n"
        "else:\n    print('Issue resolved' if ok else 'Issue reproduced')\n"
    )


def workload(tests: int) -> tuple[dict, list[InstanceCandidates]]:
    from cwm_agent.swebench.local.build import local_instances

    instances = {i.instance_id: i for i in local_instances()}
    cands = []
    for inst in instances.values():
        patches = [inst.patch, _EXTRA_FILE]
        cands.append(
            InstanceCandidates(
                inst.instance_id,
                candidates=[Candidate(patch_id(p), p, [k], 0, touched_files(p)) for k, p in enumerate(patches)],
                tests=[GeneratedTest(generated_test_id(s), s, [v]) for v in range(tests)
                       for s in [_test_source(inst.repo, v)]],
            )
        )  # fmt: skip
    return instances, cands


def ours(instances, cands, workers: int, regression: bool, client) -> tuple[float, int, dict]:
    with tempfile.TemporaryDirectory(prefix="cwm-tts-bench-") as tmp:
        executor = Executor(Path(tmp), ExecOptions(workers=workers, regression=regression, run_id="tts-bench"), client)
        started = time.monotonic()
        executions = executor.execute(instances, cands)
        wall = time.monotonic() - started
    outcomes = {}
    for ex in executions.values():
        if ex.error:
            raise RuntimeError(f"{ex.instance_id}: {ex.error}")
        for v in ex.validation:
            outcomes[(ex.instance_id, BASE, v.test_id)] = "reproduced" if v.kept else "not kept"
        for pid, r in ex.results.items():
            for tid, out in r.generated.items():
                outcomes[(ex.instance_id, pid, tid)] = out
    return wall, executor.stats.runs, outcomes


def _one_fresh(instance, image, patch: str | None, test: GeneratedTest | None, files, client) -> str:
    """One (patch, test) in its own fresh container, as the official harness runs one evaluation."""
    command = suite_command(instance)
    with DockerSandbox(_sandbox_config(image, ExecOptions(run_id="tts-bench-peer"), command.setup), client) as box:
        if patch is not None:
            box.write_file("/tmp/candidate.patch", patch.encode())
            if not any(box.run(f"cd {REPO_DIR} && {a} /tmp/candidate.patch").exit_code == 0 for a in APPLY_COMMANDS):
                return "not applied"
        if test is None:
            box.run(f"cd {REPO_DIR} && {command.command(files)} > /tmp/suite.log 2>&1", timeout=1800)
            return "suite"
        _put(box, f"{REPO_DIR}/{TEST_FILE}", test.source)
        run = box.run(f"cd {REPO_DIR} && $PY {TEST_FILE} 2>&1", timeout=120)
        return verdict(run.output) if run.status != RunStatus.TIMEOUT else "other"


def fresh(instances, cands, workers: int, regression: bool, client) -> tuple[float, int, dict]:
    from cwm_agent.tts.regression import related_test_files

    jobs = []
    for inst in cands:
        instance = instances[inst.instance_id]
        image = resolve_image(instance, client)
        files = []
        if regression:
            listed = DockerSandbox(_sandbox_config(image, ExecOptions()), client)
            with listed as box:
                names = box.run(f"cd {REPO_DIR} && git ls-files '*.py'").output.split()
            files = related_test_files(names, sorted({f for c in inst.candidates for f in c.files}))[0]
        for pid, patch in [(BASE, None)] + [(c.patch_id, c.patch) for c in inst.candidates]:
            for test in inst.tests + ([None] if files else []):
                jobs.append((inst.instance_id, pid, instance, image, patch, test, files))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda j: _one_fresh(j[2], j[3], j[4], j[5], j[6], client), jobs))
    wall = time.monotonic() - started
    outcomes = {(j[0], j[1], j[5].test_id): r for j, r in zip(jobs, results) if j[5] is not None}
    return wall, len(jobs), outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=5, help="generated tests per instance")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--regression", action="store_true", help="also run the related test files per patch")
    args = parser.parse_args(argv)

    from cwm_agent.sandbox.images import docker_client
    from cwm_agent.swebench.local.build import build_local_images

    build_local_images()
    client = docker_client()
    instances, cands = workload(args.tests)
    ours(instances, cands[:1], 1, False, client)  # warm-up: page cache, image layers
    wall_a, runs_a, out_a = ours(instances, cands, args.workers, args.regression, client)
    wall_b, runs_b, out_b = fresh(instances, cands, args.workers, args.regression, client)
    wrong = {k: (v, out_b.get(k)) for k, v in out_a.items() if k[1] != BASE and out_b.get(k) != v}
    if wrong:
        print(f"error: outcomes differ between the two ways: {list(wrong.items())[:3]}", file=sys.stderr)
        return 1
    rate_a, rate_b = 60 * runs_a / wall_a, 60 * runs_b / wall_b
    print(f"{'way':<44} {'runs':>5} {'wall s':>7} {'runs/min':>9}")
    print(f"{'one container per (instance, patch) (ours)':<44} {runs_a:>5} {wall_a:>7.1f} {rate_a:>9.1f}")
    print(f"{'a fresh container per (patch, test)':<44} {runs_b:>5} {wall_b:>7.1f} {rate_b:>9.1f}")
    print(
        f"ratio: {rate_a / rate_b:.2f}x the runs per minute ({args.workers} workers, {args.tests} tests per instance)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
