"""`forage tasks`: mutate-fix tasks (SWE-bench-format instances) from any repository image.

1. Baseline: one long-lived container from the image (network none) runs the test suite with our
   pytest plugin (`probe.py`): which tests pass, and for each one the functions it entered
   (`sys.setprofile`; no `coverage` package needed in the image). A second run without tracing
   leaves out flaky tests (only tests that pass both times count as passing).
2. Candidates: every AST mutation (`mutate.py`) of every covered function, ordered by the seed:
   functions in a shuffled order, taken round-robin, and within a function operators in a shuffled
   order, so one seed gives one fixed sequence and tasks spread over functions and operators.
3. Validation, in the same container (the file is written, tested, restored): only the tests that
   cover the function run; a collection error means the code no longer imports. FAIL_TO_PASS = those
   that now fail, PASS_TO_PASS = every other passing test (a test that never enters the function
   cannot change; a function that module-level code calls makes every test relevant, and
   `--full-check` runs the whole suite for every candidate). Both must be non-empty. Mutations whose
   resulting module has the same AST as an earlier one are duplicates. The tests check this choice:
   with the bug in place, the whole suite fails exactly FAIL_TO_PASS and passes PASS_TO_PASS.
4. Base: per task, a small image `FROM` the source image whose /testbed is the mutated tree
   committed as the only commit of a fresh repository (fixed author and dates, so the commit id is
   the same on every run): `git log -p` cannot show the original code. The gold patch is the
   inverse diff (`git diff -R` of the mutated file), the issue text comes from the failing tests'
   output (`issue.py`). Each row names its image and its own `test_cmd`/`log_parser`, so
   `swebench run` and `swebench eval` take the tasks file like any dataset.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import queue
import random
import shlex
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from cwm_agent.agent.files import write_text_atomic
from cwm_agent.errors import UserError
from cwm_agent.forager.issue import issue_text
from cwm_agent.forager.mutate import Mutation, module_mutations
from cwm_agent.sandbox.base import RunStatus, SandboxConfig
from cwm_agent.sandbox.docker import DockerSandbox
from cwm_agent.sandbox.images import build_image, docker_client, image_exists
from cwm_agent.swebench.images import ACTIVATE_ENV, local_image_name

PROBE_DIR = "/tmp/cwm-forage"
COLLECTION = "<collection>"
"""The probe's name for the functions entered while tests were collected (module-level code)."""
PROBE_FILE = Path(__file__).resolve().parent / "probe.py"
EVAL_FLAGS = "--no-header -rA --tb=no -p no:cacheprovider"
"""Appended to the task's test command for evaluation: the flags the pytest log parser reads."""
COMMIT_ENV = (
    "GIT_AUTHOR_NAME=cwm-agent GIT_AUTHOR_EMAIL=forage@cwm-agent.invalid GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' "
    "GIT_COMMITTER_NAME=cwm-agent GIT_COMMITTER_EMAIL=forage@cwm-agent.invalid "
    "GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'"
)
_TASK_DOCKERFILE = """\
FROM {source}
COPY files/ {repo_dir}/
RUN cd {repo_dir} \\
 && find . -name __pycache__ -type d -prune -exec rm -rf {{}} + \\
 && rm -rf .git \\
 && git init -q -b main \\
 && git add -A \\
 && env {commit_env} git commit -q -m "Initial commit" \\
 && git gc -q --prune=now
LABEL io.cwm-agent.forage-source="{source}" io.cwm-agent.forage-task="{instance_id}"
"""


class ForageError(UserError, RuntimeError):
    """Tasks could not be made (no image, no passing test, ...); the message says what to do."""


class ForageOptions(BaseModel):
    image: str
    repo_dir: str = "/testbed"
    test_cmd: str = "pytest"
    """The project's pytest command (run in repo_dir); our flags are appended."""
    count: int = 10
    seed: int = 0
    repo: str | None = None
    """The `repo` of the rows (default: from the image name)."""
    version: str = "forage"
    max_candidates: int | None = None
    """Most mutations to try (default: 30 per wanted task)."""
    per_function: int = 2
    """Most tasks from one function."""
    jobs: int = 1
    """Candidates validated at once, each in its own container (the tasks are the same for any number)."""
    full_check: bool = False
    """Run the whole suite for every candidate (default: only the tests that cover the mutated function;
    the others never enter it, so they still pass)."""
    test_timeout: float = 600.0
    """Seconds a test run may take (the baseline; a mutated run gets 3x the whole suite's time + 10 s, at most this)."""
    memory: str = "4g"
    cpus: float = 2.0
    run_id: str = ""


@dataclass
class ForageStats:
    """What generation did, for the summary line and the benchmark."""

    passing_tests: int = 0
    covered_functions: int = 0
    candidates: int = 0
    tried: int = 0
    tests_run: int = 0
    """Tests run over all validations (the benchmark's measure of work per candidate)."""
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)


def default_repo(image: str) -> str:
    """`owner/name` for an image: from a SWE-bench image's instance id, else the image's repository."""
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].replace("_1776_", "__")
    if name.startswith("sweb.eval.") and "__" in name:
        instance = name.split(".", 3)[-1]
        owner, rest = instance.split("__", 1)
        return f"{owner}/{rest.rsplit('-', 1)[0] if rest.rsplit('-', 1)[-1].isdigit() else rest}"
    repo = image.split(":", 1)[0]
    return repo if "/" in repo else f"local/{repo}"


def order_candidates(mutations: list[Mutation], seed: int) -> list[Mutation]:
    """The seed's order: functions shuffled, taken round-robin; operators shuffled within a function."""
    rng = random.Random(seed)
    by_function: dict[tuple[str, int], dict[str, list[Mutation]]] = defaultdict(lambda: defaultdict(list))
    for m in mutations:
        by_function[(m.path, m.first_line)][m.operator].append(m)
    queues: list[list[Mutation]] = []
    for key in sorted(by_function):
        ops = by_function[key]
        names = sorted(ops)
        rng.shuffle(names)
        for name in names:
            ops[name].sort(key=lambda m: (m.line, m.key))
            rng.shuffle(ops[name])
        interleaved: list[Mutation] = []
        while any(ops[n] for n in names):
            for n in names:
                if ops[n]:
                    interleaved.append(ops[n].pop())
        queues.append(interleaved)
    rng.shuffle(queues)
    out: list[Mutation] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


class _Workspace:
    """The long-lived validation container: runs the tests with the probe, writes and restores files."""

    def __init__(self, sandbox: DockerSandbox, options: ForageOptions) -> None:
        self.sandbox = sandbox
        self.options = options
        self.timeout = options.test_timeout

    def sh(self, command: str, timeout: float | None = None):
        return self.sandbox.run(command, timeout=timeout or self.timeout)

    def prepare(self) -> None:
        self.sh(f"mkdir -p {PROBE_DIR}")
        self.sandbox.write_file(f"{PROBE_DIR}/forage_probe.py", PROBE_FILE.read_bytes())
        d = shlex.quote(self.options.repo_dir)
        run = self.sh(
            f"cd {d} && find . -name __pycache__ -type d -prune -exec rm -rf {{}} + ; "
            f"(git rev-parse --git-dir >/dev/null 2>&1 || (git init -q && git add -A && "
            f"env {COMMIT_ENV} git commit -q -m base)) && git add -A >/dev/null && echo OK"
        )
        if "OK" not in run.output:
            raise ForageError(f"{self.options.repo_dir} in {self.options.image} is not usable: {run.output[-500:]}")

    def pytest(
        self, tests: list[str] | None, trace: bool, extra: str = "", timeout: float | None = None
    ) -> dict | None:
        """Run the tests (all when None) with the probe; its JSON, or None when the run timed out."""
        o = self.options
        out = f"{PROBE_DIR}/out.json"
        args = " ".join(shlex.quote(t) for t in tests or [])
        command = (
            f"rm -f {out}; cd {shlex.quote(o.repo_dir)} && env FORAGE_OUT={out} "
            f"FORAGE_ROOT={shlex.quote(o.repo_dir)} FORAGE_TRACE={int(trace)} "
            f"PYTHONPATH={PROBE_DIR}${{PYTHONPATH:+:$PYTHONPATH}} "
            f"{o.test_cmd} -p forage_probe -p no:cacheprovider -q --tb=short {extra} {args} "
            f"> {PROBE_DIR}/log.txt 2>&1; echo EXIT=$?"
        )
        run = self.sh(command, timeout=timeout)
        if run.status == RunStatus.TIMEOUT:
            return None
        try:
            return json.loads(self.sandbox.read_file(out))
        except (FileNotFoundError, ValueError):
            log = self.sandbox.read_file(f"{PROBE_DIR}/log.txt").decode("utf-8", "replace")
            raise ForageError(
                f"`{o.test_cmd}` did not run under pytest with our plugin ({run.output.strip()}); its output: "
                f"{log.strip()[-800:] or '(none)'}; pass the project's pytest command with --test-cmd."
            ) from None

    def read(self, path: str) -> bytes:
        return self.sandbox.read_file(f"{self.options.repo_dir}/{path}")

    def write(self, path: str, data: bytes) -> None:
        """Write a module and drop its cached bytecode: a same-size edit in the same second as the cache
        would otherwise be run from the stale .pyc (every other module keeps its cache: runs stay fast)."""
        full = f"{self.options.repo_dir}/{path}"
        self.sandbox.write_file(full, data)
        folder, _, name = full.rpartition("/")
        stem = shlex.quote(name.removesuffix(".py"))
        self.sh(f"rm -f {shlex.quote(folder)}/__pycache__/{stem}.*.pyc", timeout=60)

    def fix_patch(self, path: str) -> str:
        out = f"{PROBE_DIR}/fix.diff"
        # -R swaps the prefixes too: the fix comes out as a/ (buggy) -> b/ (original), like any patch.
        diff = f"git diff -R --src-prefix=b/ --dst-prefix=a/ -- {shlex.quote(path)}"
        self.sh(f"cd {shlex.quote(self.options.repo_dir)} && {diff} > {out}", timeout=60)
        return self.sandbox.read_file(out).decode("utf-8")


def _passed(data: dict) -> set[str]:
    return {t for t, r in data["tests"].items() if r["outcome"] == "passed" and not any(c.isspace() for c in t)}


def _failed(data: dict) -> set[str]:
    return {t for t, r in data["tests"].items() if r["outcome"] in ("failed", "error")}


def _instance_id(repo: str, mutation: Mutation, mutated: str) -> str:
    digest = hashlib.sha256(f"{repo}\0{mutation.path}\0{mutated}".encode()).hexdigest()[:10]
    return f"{repo.replace('/', '__')}-forage-{digest}"


def generate_tasks(
    options: ForageOptions,
    on_progress: Callable[[ForageStats], None] | None = None,
    fresh_container_each: bool = False,
) -> tuple[list[dict], ForageStats]:
    """Make up to `options.count` tasks; returns (rows, stats). Builds one image per task.

    `fresh_container_each` is the naive peer of the benchmark: every candidate is validated in its
    own new container, running the whole suite (no coverage-based selection)."""
    notify = on_progress or (lambda s: None)
    stats = ForageStats()
    client = docker_client()
    if not image_exists(client, options.image):
        raise ForageError(f"image {options.image} is not on this Docker engine: build or pull it first.")
    repo = options.repo or default_repo(options.image)
    config = SandboxConfig(
        image=options.image,
        workdir=options.repo_dir,
        network="none",
        memory=options.memory,
        cpus=options.cpus,
        command_timeout=options.test_timeout,
        output_cap_bytes=2_000_000,
        startup_commands=[ACTIVATE_ENV],
        run_id=options.run_id,
    )
    t0 = time.monotonic()
    accepted: list[tuple[Mutation, str, Verdict]] = []
    with DockerSandbox(config, client) as sandbox:
        ws = _Workspace(sandbox, options)
        ws.prepare()
        base = ws.pytest(None, trace=True)
        stats.seconds["baseline"] = round(time.monotonic() - t0, 3)
        if base is None:
            raise ForageError(f"the test suite ran past {options.test_timeout:g} s; raise --test-timeout.")
        t_again = time.monotonic()
        again = ws.pytest(None, trace=False)  # a test that passes only once is flaky: never a task's test
        suite_seconds = time.monotonic() - t_again
        passing = _passed(base) & (_passed(again) if again is not None else set())
        if base["errors"]:
            raise ForageError(f"the test suite does not collect cleanly: {base['errors'][0][:500]}")
        if not passing:
            raise ForageError(f"`{options.test_cmd}` found no passing test in {options.repo_dir} of {options.image}.")
        stats.passing_tests = len(passing)
        # A mutation that loops forever is found out at 3x the untraced suite's time (+10 s for a loaded machine).
        run_timeout = min(options.test_timeout, 3 * suite_seconds + 10)
        test_files = set(base["test_files"])
        covering: dict[tuple[str, int], list[str]] = defaultdict(list)
        for test in sorted(passing):
            for path, line in base["cover"].get(test, []):
                if path in test_files or path.rsplit("/", 1)[-1] == "conftest.py" or not path.endswith(".py"):
                    continue
                covering[(path, line)].append(test)
        for path, line in base["cover"].get(COLLECTION, []):
            if (path, line) in covering:  # runs at import too: its result may reach every test
                covering[(path, line)] = sorted(passing)
        stats.covered_functions = len(covering)
        by_file: dict[str, set[int]] = defaultdict(set)
        for path, line in covering:
            by_file[path].add(line)
        sources: dict[str, str] = {}
        original_ast: dict[str, str] = {}
        mutations: list[Mutation] = []
        for path in sorted(by_file):
            try:
                sources[path] = ws.read(path).decode("utf-8")
                mutations += module_mutations(path, sources[path], by_file[path], check_parse=False)
                original_ast[path] = ast.dump(ast.parse(sources[path]))
            except (UnicodeDecodeError, SyntaxError, ValueError, FileNotFoundError):
                continue
        ordered = order_candidates(mutations, options.seed)
        stats.candidates = len(ordered)
        limit = options.max_candidates or 30 * options.count
        seen_ast: set[str] = set()
        per_function: Counter = Counter()

        def capped(mutation: Mutation) -> bool:
            return per_function[(mutation.path, mutation.first_line)] >= options.per_function

        def candidates():
            """(mutation, mutated source, relevant tests) in the seed's order, after the checks needing no run."""
            for mutation in ordered:
                if capped(mutation):
                    continue
                original = sources[mutation.path]
                mutated = mutation.apply(original)
                try:
                    dump = ast.dump(ast.parse(mutated))
                except (SyntaxError, ValueError):
                    stats.rejected["syntax"] += 1
                    continue
                semantic = hashlib.sha256(f"{mutation.path}\0{dump}".encode()).hexdigest()
                if semantic in seen_ast or dump == original_ast[mutation.path]:
                    stats.rejected["duplicate"] += 1
                    continue
                seen_ast.add(semantic)
                lines = mutation.users or (mutation.first_line,)
                yield mutation, mutated, sorted({t for line in lines for t in covering.get((mutation.path, line), [])})

        def validate(w: _Workspace, candidate) -> tuple[str | Verdict, int]:
            mutation, mutated, relevant = candidate
            if fresh_container_each:
                return _validate_fresh(config, client, options, mutation, mutated, passing, run_timeout)
            original = sources[mutation.path]
            return _validate(w, mutation, mutated, original, relevant, passing, run_timeout, options.full_check)

        def decide(candidate, outcome: tuple[str | Verdict, int]) -> bool:
            """Count one validated candidate, in the seed's order; False once enough are kept or tried."""
            mutation, mutated, _ = candidate
            if capped(mutation):  # validated in parallel while an earlier one filled its function's quota
                return True
            verdict, ran = outcome
            stats.tried += 1
            stats.tests_run += ran
            if isinstance(verdict, str):
                stats.rejected[verdict] += 1
            else:
                per_function[(mutation.path, mutation.first_line)] += 1
                accepted.append((mutation, mutated, verdict))
                stats.accepted += 1
            notify(stats)
            return len(accepted) < options.count and stats.tried < limit

        t1 = time.monotonic()
        if options.jobs == 1:
            for candidate in candidates():
                if not decide(candidate, validate(ws, candidate)):
                    break
        else:
            _validate_parallel(ws, config, client, options, candidates(), validate, decide)
        stats.seconds["validate"] = round(time.monotonic() - t1, 3)
    t2 = time.monotonic()
    names = [local_image_name(_instance_id(repo, mutation, mutated)) for mutation, mutated, _ in accepted]
    existed = {name for name in names if image_exists(client, name)}
    try:
        with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="forage-build") as pool:
            rows = list(pool.map(lambda a: _build_task(options, repo, *a, client), accepted))
    except BaseException:
        # Interrupted (or a build failed): no tasks file will name the images built now, so none is kept.
        for name in names:
            if name not in existed:
                with contextlib.suppress(Exception):
                    client.images.remove(name, force=True)
        raise
    stats.seconds["build"] = round(time.monotonic() - t2, 3)
    stats.seconds["total"] = round(time.monotonic() - t0, 3)
    return rows, stats


def _validate_parallel(ws: _Workspace, config, client, options, candidates, validate, decide) -> None:
    """`options.jobs` workspaces validate candidates ahead; the verdicts are counted in the seed's order, so
    the tasks are the same as with one job (later candidates validated in vain are discarded)."""
    with contextlib.ExitStack() as stack:
        free: queue.Queue[_Workspace] = queue.Queue()
        free.put(ws)
        for _ in range(options.jobs - 1):
            extra = _Workspace(stack.enter_context(DockerSandbox(config, client)), options)
            extra.prepare()
            free.put(extra)

        def job(candidate):
            w = free.get()
            try:
                return validate(w, candidate)
            finally:
                free.put(w)

        pool = stack.enter_context(ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="forage"))
        pending: deque = deque()
        stream = iter(candidates)

        def fill() -> None:
            while len(pending) < 2 * options.jobs:
                candidate = next(stream, None)
                if candidate is None:
                    return
                pending.append((candidate, pool.submit(job, candidate)))

        try:
            fill()
            while pending:
                candidate, future = pending.popleft()
                if not decide(candidate, future.result()):
                    break
                fill()
        finally:
            for _, future in pending:
                future.cancel()


@dataclass
class Verdict:
    """A kept mutation: the fix, the tests that now fail and still pass, the failures' text."""

    patch: str
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    texts: dict[str, str]


def _verdict(run: dict | None, passing: set[str], ran_all: bool, patch: Callable[[], str]) -> str | Verdict:
    """A rejection reason, or the verdict. Tests that did not run (not covering the function) still pass."""
    if run is None:
        return "timeout"
    if run["errors"]:
        return "does_not_import"
    failed = _failed(run) & passing
    if not failed:
        return "no_test_fails"
    still = (_passed(run) & passing) if ran_all else passing - failed
    if not still:
        return "no_test_passes"
    texts = {t: run["tests"][t].get("text", "") for t in failed}
    return Verdict(patch(), sorted(failed), sorted(still), texts)


def _ran(run: dict | None) -> int:
    return len(run["tests"]) if run else 0


def _validate(
    ws: _Workspace, mutation, mutated, original, relevant, passing, timeout, full_check
) -> tuple[str | Verdict, int]:
    """Run the tests covering the mutated function (the whole suite when they are most of it, or `full_check`);
    (the verdict, tests run)."""
    ws.write(mutation.path, mutated.encode("utf-8"))
    try:
        ran_all = full_check or 2 * len(relevant) > len(passing)
        run = ws.pytest(None if ran_all else relevant, trace=False, timeout=timeout)
        result = _verdict(run, passing, ran_all, lambda: ws.fix_patch(mutation.path)), _ran(run)
    except BaseException:
        # Ctrl-C may have removed the container already: the restore must not hide the interruption.
        with contextlib.suppress(Exception):
            ws.write(mutation.path, original.encode("utf-8"))
        raise
    ws.write(mutation.path, original.encode("utf-8"))
    return result


def _validate_fresh(config, client, options, mutation, mutated, passing, timeout) -> tuple[str | Verdict, int]:
    """The naive peer: a new container for this one candidate, the whole suite run."""
    with DockerSandbox(config, client) as sandbox:
        ws = _Workspace(sandbox, options)
        ws.prepare()
        ws.write(mutation.path, mutated.encode("utf-8"))
        run = ws.pytest(None, trace=False, timeout=timeout)
        return _verdict(run, passing, True, lambda: ws.fix_patch(mutation.path)), _ran(run)


def _build_task(options, repo, mutation, mutated, verdict: Verdict, client) -> dict:
    f2p, p2p = verdict.fail_to_pass, verdict.pass_to_pass
    instance_id = _instance_id(repo, mutation, mutated)
    image = local_image_name(instance_id)
    dockerfile = _TASK_DOCKERFILE.format(
        source=options.image, repo_dir=options.repo_dir, commit_env=COMMIT_ENV, instance_id=instance_id
    )
    build_image(image, dockerfile, {f"files/{mutation.path}": mutated.encode("utf-8")})
    out = client.containers.run(
        image,
        ["git", "-C", options.repo_dir, "rev-parse", "HEAD"],
        remove=True,
        network_mode="none",
        labels={"io.cwm-agent.project": "cwm-agent"},
    )
    base_commit = out.decode().strip()
    return {
        "instance_id": instance_id,
        "repo": repo,
        "base_commit": base_commit,
        "problem_statement": issue_text(f2p, verdict.texts, verdict.patch, mutated),
        "patch": verdict.patch,
        "test_patch": "",
        "version": options.version,
        "FAIL_TO_PASS": f2p,
        "PASS_TO_PASS": p2p,
        "environment_setup_commit": base_commit,
        "hints_text": "",
        "created_at": "",
        "image": image,
        "test_cmd": f"{options.test_cmd} {EVAL_FLAGS}",
        "log_parser": "pytest",
        "forage": {
            "source_image": options.image,
            "seed": options.seed,
            "operator": mutation.operator,
            "file": mutation.path,
            "function": mutation.function,
            "line": mutation.line,
        },
    }


def write_tasks(rows: list[dict], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
