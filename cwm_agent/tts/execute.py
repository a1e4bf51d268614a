"""Execution of candidates: each distinct patch in one fresh container, against every test it needs.

Per instance, two stages, each container fresh from the instance's image with network `none`:

1. *validation*: the unpatched repository. Lists the repository's test files, runs the regression
   suite (`regression.py`) to find the tests that pass before any change, and runs every generated
   test that passes the static checks (`testgen.py`): a test is kept only if it prints
   `Issue reproduced` and neither other line.
2. *execution*: each distinct candidate patch (`candidates.py`), applied as the official harness
   applies patches (`git apply`, then `patch --fuzz=5`), then the spec's install step where the
   repository has one, the same regression suite, and every kept generated test.

One container per (instance, patch) runs all of its tests, one after another in one shell: the
regression suite first (so `test_issue.py` is never collected by it), then each generated test
written to the repository root as `test_issue.py`, run with `python test_issue.py`, and removed.

Every outcome is cached in `RUN_DIR/tts/cache.jsonl`, one line per (instance, patch, test):
`patch_id` is the normalised patch's id (`base` for the unpatched repository); `test_id` is
`apply`, `test-files` (the repository's test files), `regression:<hash of the files>` (one run of
the suite, with each test's status), or a generated test's id. A container is started only for a
(instance, patch) that lacks a needed line, so a second `select` starts none. Each container's life
is logged in `RUN_DIR/tts/containers.jsonl` (stage, seconds) for the report.

The top generated tests (`TOP_TESTS`, 5) are chosen *by agreement*: over the instance's candidates
that applied, a kept test's outcome vector says for each candidate whether it printed
`Issue resolved`; a test's agreement is the number of (other kept test, candidate) pairs on which
the two tests' outcomes are equal. The most agreeing tests win; ties go to the test more rollouts
wrote, then to the one written by the earliest rollout.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cwm_agent.sandbox import cleanup
from cwm_agent.sandbox.base import RunStatus, SandboxConfig, SandboxError
from cwm_agent.sandbox.docker import DockerSandbox
from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.evaluate import APPLY_COMMANDS
from cwm_agent.swebench.images import REPO_DIR, resolve_image
from cwm_agent.tts.candidates import Candidate, GeneratedTest, InstanceCandidates
from cwm_agent.tts.regression import PASSING, files_key, is_test_file, related_test_files, suite_command
from cwm_agent.tts.testgen import TEST_FILE, V_REPRODUCED, V_RESOLVED, static_problem, verdict

BASE = "base"
"""The patch id of the unpatched repository."""
TOP_TESTS = 5
APPLIED, NOT_APPLIED = "applied", "not_applied"


@dataclass
class ExecOptions:
    workers: int = 2
    test_timeout: float = 120.0
    """Seconds one generated test may run (a test past it counts as `other`)."""
    suite_timeout: float = 1800.0
    """Seconds the regression suite may run in one container."""
    memory: str = "8g"
    cpus: float = 2.0
    top_tests: int = TOP_TESTS
    regression: bool = True
    """Run the regression tests (off: generated tests only)."""
    registry_prefix: str | None = None
    allow_pull: bool = False
    run_id: str = field(default_factory=lambda: f"tts-{uuid.uuid4().hex[:10]}")
    """Label of this execution's containers (`cwm-agent sandbox prune --run-id`)."""


class Cache:
    """`cache.jsonl`: the last line of each (instance, patch, test) wins; appends are fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._entries[(entry["instance_id"], entry["patch_id"], entry["test_id"])] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill: that result is run again

    def get(self, instance_id: str, pid: str, test_id: str) -> dict | None:
        return self._entries.get((instance_id, pid, test_id))

    def put_many(self, entries: list[dict]) -> None:
        if not entries:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                for entry in entries:
                    fh.write(json.dumps(entry, sort_keys=True) + "\n")
                    self._entries[(entry["instance_id"], entry["patch_id"], entry["test_id"])] = entry
                fh.flush()
                os.fsync(fh.fileno())


@dataclass
class TestVerdict:
    """What became of one generated test in validation."""

    test_id: str
    rollouts: list[int]
    kept: bool
    reason: str
    """Why it was dropped (or `prints 'Issue reproduced' on the unpatched repository`)."""


@dataclass
class PatchResult:
    patch_id: str
    applied: bool
    regression: dict[str, str] = field(default_factory=dict)
    """test -> status in the patch's run of the regression files."""
    generated: dict[str, str] = field(default_factory=dict)
    """generated test id -> verdict (reproduced | resolved | other)."""

    def regression_passed(self, tests: list[str]) -> int:
        return sum(self.regression.get(t) in PASSING for t in tests)

    def generated_passed(self, test_ids: list[str]) -> int:
        return sum(self.generated.get(t) == V_RESOLVED for t in test_ids)


@dataclass
class Execution:
    """Everything an execution-based strategy may read about one instance."""

    instance_id: str
    regression_files: list[str] = field(default_factory=list)
    regression_how: str = ""
    regression_tests: list[str] = field(default_factory=list)
    """The repository's tests that pass on the unpatched code."""
    validation: list[TestVerdict] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    agreement: dict[str, int] = field(default_factory=dict)
    top: list[str] = field(default_factory=list)
    """The kept tests by agreement, at most `top_tests`."""
    results: dict[str, PatchResult] = field(default_factory=dict)
    error: str = ""
    """Why the instance could not be executed (no image, ...); then it has no results."""


@dataclass
class ExecStats:
    containers: int = 0
    container_seconds: float = 0.0
    runs: int = 0
    """(patch, test) outcomes computed in containers (a regression suite run counts once)."""


def _sandbox_config(image: str, options: ExecOptions, setup: list[str] | None = None) -> SandboxConfig:
    """`setup` runs when the shell starts, and again when a test past its timeout forces a new shell."""
    startup = ["\n".join([*setup, "PY=$(command -v python || command -v python3)"])] if setup else []
    return SandboxConfig(
        startup_commands=startup,
        image=image,
        workdir=REPO_DIR,
        network="none",
        memory=options.memory,
        cpus=options.cpus,
        command_timeout=max(options.test_timeout, 120.0),
        env={"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        output_cap_bytes=200_000,
        run_id=options.run_id,
    )


def _put(sandbox: DockerSandbox, path: str, text: str) -> None:
    """Write a small file through the open shell (a few ms; the archive API takes ~100 ms a call)."""
    data = text.encode("utf-8")
    if len(data) > 256_000:
        sandbox.write_file(path, data)
        return
    encoded = base64.b64encode(data).decode("ascii")
    run = sandbox.run(f"printf '%s' '{encoded}' | base64 -d > {path}", timeout=60)
    if run.exit_code != 0:
        sandbox.write_file(path, data)


def _read(sandbox: DockerSandbox, path: str) -> str:
    try:
        return sandbox.read_file(path).decode("utf-8", errors="replace")
    except (FileNotFoundError, SandboxError):
        return ""


@dataclass
class _Job:
    """What one container must compute for one (instance, patch)."""

    instance: SWEBenchInstance
    pid: str
    patch: str | None
    stage: str
    need_apply: bool = False
    need_files: bool = False
    suite_files: list[str] | None = None
    touched: list[str] = field(default_factory=list)
    """Files the instance's candidates touch (to choose the regression files once they are listed)."""
    tests: list[GeneratedTest] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.need_apply or self.need_files or self.suite_files is not None or self.tests)


class Executor:
    """Runs the jobs of many instances in `options.workers` containers at a time, through the cache."""

    def __init__(
        self, run_dir: Path, options: ExecOptions, client: Any = None, on_event: Callable[[str], None] | None = None
    ) -> None:
        self.dir = run_dir / "tts"
        self.cache = Cache(self.dir / "cache.jsonl")
        self.options = options
        self._client = client
        self.stats = ExecStats()
        self._lock = threading.Lock()
        self._images: dict[str, str] = {}
        self.on_event = on_event or (lambda message: None)

    @property
    def client(self) -> Any:
        if self._client is None:
            from cwm_agent.sandbox.images import docker_client

            self._client = docker_client()
        return self._client

    # -- one container ------------------------------------------------------------------------

    def _entry(self, job: _Job, test_id: str, outcome: str, **extra: Any) -> dict:
        return {
            "instance_id": job.instance.instance_id,
            "patch_id": job.pid,
            "test_id": test_id,
            "outcome": outcome,
            **extra,
        }

    def _run(self, job: _Job) -> None:
        """Start one container for `job`, compute what it lacks, cache it."""
        opts = self.options
        iid = job.instance.instance_id
        image = self._images.get(iid) or resolve_image(job.instance, self.client, opts.registry_prefix, opts.allow_pull)
        self._images[iid] = image
        command = suite_command(job.instance)
        entries: list[dict] = []
        started = time.monotonic()
        runs = 0
        try:
            with DockerSandbox(_sandbox_config(image, opts, command.setup), self.client) as box:
                if job.patch is not None:
                    box.write_file("/tmp/candidate.patch", job.patch.encode("utf-8"))
                    used = ""
                    for apply in APPLY_COMMANDS:
                        run = box.run(f"cd {REPO_DIR} && {apply} /tmp/candidate.patch", timeout=120)
                        if run.exit_code == 0:
                            used = apply
                            break
                    if not used:
                        entries.append(self._entry(job, "apply", NOT_APPLIED, detail=run.output[-2000:]))
                        return
                    entries.append(self._entry(job, "apply", APPLIED, detail=used))
                    if command.install:
                        box.run(command.install, timeout=opts.suite_timeout)
                if job.need_files:
                    run = box.run(f"cd {REPO_DIR} && git ls-files '*.py'", timeout=120)
                    listed = [f for f in run.output.splitlines() if is_test_file(f)]
                    entries.append(self._entry(job, "test-files", "listed", files=listed))
                    files = related_test_files(listed, job.touched)[0]
                    if files and self.cache.get(iid, job.pid, files_key(files)) is None:
                        job.suite_files = files
                if job.suite_files is not None:
                    entries.append(self._suite(box, job, command, job.suite_files))
                    runs += 1
                for test in job.tests:
                    _put(box, f"{REPO_DIR}/{TEST_FILE}", test.source)
                    t0 = time.monotonic()
                    run = box.run(f"cd {REPO_DIR} && $PY {TEST_FILE} 2>&1", timeout=opts.test_timeout)
                    output = run.output
                    if run.status == RunStatus.TIMEOUT:
                        output += f"\n[timed out after {opts.test_timeout:g} s]"
                    outcome = verdict(output) if run.status != RunStatus.TIMEOUT else "other"
                    entries.append(
                        self._entry(
                            job, test.test_id, outcome, detail=output[-2000:], seconds=round(time.monotonic() - t0, 3)
                        )
                    )
                    box.run(f"rm -f {REPO_DIR}/{TEST_FILE}", timeout=60)
                    runs += 1
        finally:
            seconds = round(time.monotonic() - started, 3)
            if not cleanup.signalled.is_set():  # a run cut short by a signal may look like a verdict: not cached
                self.cache.put_many(entries)
            with self._lock:
                self.stats.containers += 1
                self.stats.container_seconds += seconds
                self.stats.runs += runs
                self.dir.mkdir(parents=True, exist_ok=True)
                with (self.dir / "containers.jsonl").open("a", encoding="utf-8") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "instance_id": iid,
                                "patch_id": job.pid,
                                "stage": job.stage,
                                "seconds": seconds,
                                "runs": runs,
                            }
                        )
                        + "\n"
                    )
            self.on_event(f"{iid} {job.pid}: {runs} runs in {seconds:.1f} s")

    def _suite(self, box: DockerSandbox, job: _Job, command, files: list[str]) -> dict:
        t0 = time.monotonic()
        if not files:
            return self._entry(job, files_key(files), "ran", statuses={}, seconds=0.0)
        run = box.run(
            f"cd {REPO_DIR} && {command.command(files)} > /tmp/suite.log 2>&1", timeout=self.options.suite_timeout
        )
        log = _read(box, "/tmp/suite.log")
        statuses = command.parse(log)
        outcome = "timeout" if run.status == RunStatus.TIMEOUT else "ran"
        return self._entry(
            job,
            files_key(files),
            outcome,
            statuses=statuses,
            detail=log[-2000:],
            seconds=round(time.monotonic() - t0, 3),
        )

    def _run_all(self, jobs: list[_Job], errors: dict[str, str]) -> None:
        jobs = [j for j in jobs if not j.empty and j.instance.instance_id not in errors]

        def one(job: _Job) -> None:
            try:
                self._run(job)
            except SandboxError as exc:
                with self._lock:
                    errors.setdefault(job.instance.instance_id, str(exc))

        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers), thread_name_prefix="tts-exec") as pool:
            futures = [pool.submit(one, job) for job in jobs]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    # -- the two stages -------------------------------------------------------------------------

    def _files(self, inst: InstanceCandidates) -> list[str] | None:
        entry = self.cache.get(inst.instance_id, BASE, "test-files")
        if entry is None:
            return None
        touched = sorted({f for c in inst.candidates for f in c.files})
        return related_test_files(entry["files"], touched)[0]

    def execute(
        self, instances: dict[str, SWEBenchInstance], candidates: list[InstanceCandidates]
    ) -> dict[str, Execution]:
        """Validation then execution for every instance; results from the cache where it has them."""
        errors: dict[str, str] = {}
        # Stage 1: the unpatched repository.
        jobs = []
        for inst in candidates:
            job = _Job(instances[inst.instance_id], BASE, None, "validation")
            job.touched = sorted({f for c in inst.candidates for f in c.files})
            files = self._files(inst)
            job.need_files = files is None and self.options.regression
            if files and self.cache.get(inst.instance_id, BASE, files_key(files)) is None:
                job.suite_files = files
            job.tests = [
                t
                for t in inst.tests
                if static_problem(t.source) is None and self.cache.get(inst.instance_id, BASE, t.test_id) is None
            ]
            jobs.append(job)
        self._run_all(jobs, errors)
        out: dict[str, Execution] = {}
        patch_jobs: list[_Job] = []
        for inst in candidates:
            ex = out[inst.instance_id] = Execution(inst.instance_id)
            if inst.instance_id in errors:
                ex.error = errors[inst.instance_id]
                continue
            self._validate(inst, ex)
            for cand in inst.candidates:
                patch_jobs.append(self._patch_job(instances[inst.instance_id], inst, cand, ex))
        # Stage 2: every candidate patch (two rounds: a patch whose application is unknown is tried first).
        self._run_all(patch_jobs, errors)
        for inst in candidates:
            ex = out[inst.instance_id]
            if inst.instance_id in errors and not ex.error:
                ex.error = errors[inst.instance_id]
            if ex.error:
                continue
            for cand in inst.candidates:
                ex.results[cand.patch_id] = self._patch_result(inst.instance_id, cand, ex)
            self._rank(inst, ex)
        return out

    def _validate(self, inst: InstanceCandidates, ex: Execution) -> None:
        files = self._files(inst) or []
        entry = self.cache.get(inst.instance_id, BASE, "test-files") or {"files": []}
        touched = sorted({f for c in inst.candidates for f in c.files})
        ex.regression_files, ex.regression_how = related_test_files(entry["files"], touched)
        if not self.options.regression:
            files, ex.regression_files, ex.regression_how = [], [], "regression tests off"
        suite = self.cache.get(inst.instance_id, BASE, files_key(files)) or {}
        ex.regression_tests = sorted(t for t, s in (suite.get("statuses") or {}).items() if s in PASSING)
        for test in inst.tests:
            problem = static_problem(test.source)
            if problem is None:
                got = self.cache.get(inst.instance_id, BASE, test.test_id)
                if got is None:
                    problem = "not run (the unpatched repository's container failed)"
                elif got["outcome"] != V_REPRODUCED:
                    tail = " ".join((got.get("detail") or "").split())[-160:]
                    problem = f"on the unpatched repository it did not print only 'Issue reproduced': {tail!r}"
            ex.validation.append(
                TestVerdict(
                    test.test_id,
                    list(test.rollouts),
                    problem is None,
                    problem or "prints 'Issue reproduced' on the unpatched repository",
                )
            )
        ex.kept = [v.test_id for v in ex.validation if v.kept]

    def _patch_job(self, instance: SWEBenchInstance, inst: InstanceCandidates, cand: Candidate, ex: Execution) -> _Job:
        iid = inst.instance_id
        job = _Job(instance, cand.patch_id, cand.patch, "execution")
        applied = self.cache.get(iid, cand.patch_id, "apply")
        if applied is not None and applied["outcome"] == NOT_APPLIED:
            return job
        # Not known yet: the container applies it, and runs the tests only when it applies.
        job.need_apply = applied is None
        if ex.regression_files and self.cache.get(iid, cand.patch_id, files_key(ex.regression_files)) is None:
            job.suite_files = ex.regression_files
        kept = set(ex.kept)
        job.tests = [
            t for t in inst.tests if t.test_id in kept and self.cache.get(iid, cand.patch_id, t.test_id) is None
        ]
        if job.need_apply or job.suite_files is not None or job.tests:
            job.need_apply = True  # a new container must apply the patch again before its tests
        return job

    def _patch_result(self, iid: str, cand: Candidate, ex: Execution) -> PatchResult:
        applied = self.cache.get(iid, cand.patch_id, "apply")
        result = PatchResult(cand.patch_id, applied is not None and applied["outcome"] == APPLIED)
        if not result.applied:
            return result
        suite = self.cache.get(iid, cand.patch_id, files_key(ex.regression_files)) or {}
        result.regression = dict(suite.get("statuses") or {})
        for tid in ex.kept:
            got = self.cache.get(iid, cand.patch_id, tid)
            result.generated[tid] = got["outcome"] if got else "other"
        return result

    def _rank(self, inst: InstanceCandidates, ex: Execution) -> None:
        applied = [r for r in ex.results.values() if r.applied]
        vectors = {t: [r.generated.get(t) == V_RESOLVED for r in applied] for t in ex.kept}
        for t in ex.kept:
            ex.agreement[t] = sum(a == b for other in ex.kept if other != t for a, b in zip(vectors[t], vectors[other]))
        tests = {t.test_id: t for t in inst.tests}
        order = sorted(ex.kept, key=lambda t: (-ex.agreement[t], -len(tests[t].rollouts), min(tests[t].rollouts)))
        ex.top = order[: self.options.top_tests]
