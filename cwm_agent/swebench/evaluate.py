"""Evaluation: each prediction in a fresh container from the untouched instance image.

Per instance, as the official harness does: apply the model patch (`git apply`, then `patch` with
fuzz), run the eval script (the test patch is applied by the script itself), keep the test log, and
grade it. Files per instance under OUT/<instance_id>/: patch.diff, apply.log, eval.sh,
test_output.txt, report.json (official schema, only when the tests ran), result.json (our outcome
record, written last: its presence means the instance is done). OUT/report.json is the run summary.

A result is reused only for what decided it: the instance, the sha256 of the patch, the hash of the
dataset row's fields that matter to evaluation, and the harness version (`eval_key`); anything else
is evaluated again. An interrupted evaluation removes its containers at once and keeps what finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, field_validator

from cwm_agent import __version__
from cwm_agent.agent.files import write_text_atomic
from cwm_agent.sandbox import cleanup
from cwm_agent.sandbox.base import RunStatus, SandboxConfig, SandboxError, check_memory, format_size
from cwm_agent.sandbox.docker import DockerSandbox
from cwm_agent.sandbox.images import docker_client
from cwm_agent.swebench.dataset import Prediction, SWEBenchInstance
from cwm_agent.swebench.grading import EMPTY_PATCH, ERROR, RESOLVED, UNRESOLVED, grade, make_summary
from cwm_agent.swebench.images import REPO_DIR, resolve_image
from cwm_agent.swebench.spec import EvalSpec, make_eval_spec

# The official harness's order (swebench.harness.run_evaluation.GIT_APPLY_CMDS).
APPLY_COMMANDS = ["git apply --verbose", "git apply --verbose --reject", "patch --batch --fuzz=5 -p1 -i"]
PATCH_PATH = "/tmp/patch.diff"
EVAL_SCRIPT_PATH = "/eval.sh"
TEST_OUTPUT_PATH = "/tmp/test_output.txt"

log = logging.getLogger(__name__)

ROW_FIELDS_NOT_GRADED = {"problem_statement", "patch", "hints_text", "created_at"}
"""Dataset fields that do not change an evaluation (everything else of a row does: repo, version, base
commit, test patch, test lists, and a 5.x row's image, eval script and log parser)."""


def _harness_version() -> str:
    try:
        from importlib.metadata import version

        swebench = version("swebench")
    except Exception:  # noqa: BLE001 - not installed: the key says so
        swebench = "?"
    return f"cwm-agent {__version__}, swebench {swebench}"


HARNESS_VERSION = _harness_version()


def patch_bytes(model_patch: str | None) -> bytes:
    """The patch as bytes (a lone surrogate kept as it came, so it can be hashed and shown)."""
    return (model_patch or "").encode("utf-8", "surrogatepass")


def eval_key(instance: SWEBenchInstance, model_patch: str | None) -> dict[str, str]:
    """What decides an instance's verdict: the patch, the dataset row's graded fields, the harness."""
    row = {k: v for k, v in instance.model_dump(mode="json").items() if k not in ROW_FIELDS_NOT_GRADED}
    row_text = json.dumps(row, sort_keys=True, ensure_ascii=True)
    return {
        "instance_id": instance.instance_id,
        "patch_sha256": hashlib.sha256(patch_bytes(model_patch)).hexdigest() if model_patch is not None else "none",
        "row_sha256": hashlib.sha256(row_text.encode()).hexdigest(),
        "harness": HARNESS_VERSION,
    }


class EvalInterrupted(Exception):
    """The evaluation was stopped (Ctrl-C, a signal) while this instance ran: nothing is recorded for it."""


class _Stopper:
    """The containers of one evaluation, removed at once when it is interrupted (from any thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._live: dict[int, object] = {}

    def stopped(self) -> bool:
        """Stopped, or a stop signal arrived (its handler may be closing sandboxes before we hear of it)."""
        return self.event.is_set() or cleanup.signalled.is_set()

    def add(self, sandbox) -> None:  # noqa: ANN001
        self._live[id(sandbox)] = sandbox
        if self.stopped():
            sandbox.close()
            raise EvalInterrupted

    def discard(self, sandbox) -> None:  # noqa: ANN001
        self._live.pop(id(sandbox), None)

    def stop(self) -> None:
        self.event.set()
        for sandbox in list(self._live.copy().values()):
            try:
                sandbox.close()
            except Exception as exc:  # noqa: BLE001 - the others must still go
                log.warning("closing %r failed: %s", sandbox, exc)


class EvalOptions(BaseModel):
    """How to evaluate. Defaults match the published CWM setup (600 s, no network)."""

    timeout: float = 600.0
    """Seconds the eval script may run before the instance counts as an error."""
    network: Literal["none", "host"] = "none"
    """Network of the evaluation containers."""
    pip_no_index: bool | None = None
    """Tell pip there is no package index (PIP_NO_INDEX=1). None: on when the network is `none`, where
    pip would otherwise spend seconds retrying an unreachable index in install steps."""
    registry_prefix: str | None = None
    """Registry mirror to pull official images from (with allow_pull)."""
    allow_pull: bool = False
    """Pull missing images from a registry."""
    memory: str = "8g"
    """Memory of an evaluation container (Docker syntax, at least 64m)."""
    cpus: float = Field(2.0, gt=0)
    run_id: str = Field(default_factory=lambda: f"eval-{uuid.uuid4().hex[:10]}")
    """Label of this evaluation's containers (`cwm-agent sandbox prune --run-id`): one per run."""
    rerun: bool = False
    """Evaluate instances again even when OUT/<id>/result.json holds a verdict for the same key."""
    max_log_bytes: int = Field(50_000_000, ge=10_000)
    """Most bytes of an instance's test log read from its container: a longer log keeps its head and
    tail, says at its end how much was cut, and the result notes it."""

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        return check_memory(value)


@dataclass
class InstanceResult:
    """The outcome of one prediction."""

    instance_id: str
    outcome: str
    """resolved | unresolved | empty_patch | error"""
    error: str = ""
    image: str = ""
    total_s: float = 0.0
    test_run_s: float = 0.0
    """Seconds the eval script ran in the container (the rest of total_s is harness overhead)."""
    apply_command: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    key: dict[str, str] = field(default_factory=dict)
    """`eval_key` of what was evaluated: a later evaluation reuses this result only for the same key."""
    reused: bool = False
    """This result was taken from an earlier evaluation in the same folder (not written to result.json)."""


def _sandbox_config(image: str, options: EvalOptions) -> SandboxConfig:
    no_index = options.pip_no_index if options.pip_no_index is not None else options.network == "none"
    env = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"} if no_index else {}
    return SandboxConfig(
        image=image,
        workdir=REPO_DIR,
        network=options.network,
        memory=options.memory,
        cpus=options.cpus,
        command_timeout=options.timeout,
        env=env,
        output_cap_bytes=1_000_000,
        run_id=options.run_id,
    )


def _make_sandbox(config: SandboxConfig, client):
    return DockerSandbox(config, client)


def _cut_note(dropped: int, options: EvalOptions) -> str:
    return (
        f"the test log was cut: {format_size(dropped)} left out of its middle "
        f"(over the cap of {format_size(options.max_log_bytes)}, EvalOptions.max_log_bytes)"
    )


def evaluate_instance(
    instance: SWEBenchInstance,
    model_patch: str | None,
    out_dir: Path,
    options: EvalOptions | None = None,
    client=None,
    spec: EvalSpec | None = None,
    stopper: _Stopper | None = None,
) -> InstanceResult:
    """Evaluate one patch against one instance; writes the instance's files under `out_dir`/<id>/.

    Raises EvalInterrupted (recording nothing) when `stopper` stops the evaluation meanwhile."""
    from swebench.harness.constants import APPLY_PATCH_FAIL, APPLY_PATCH_PASS

    options = options or EvalOptions()
    started = time.monotonic()
    inst_dir = out_dir / instance.instance_id
    inst_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "result.json", "test_output.txt", "apply.log"):
        (inst_dir / stale).unlink(missing_ok=True)
    result = InstanceResult(instance.instance_id, ERROR, key=eval_key(instance, model_patch))

    def finish() -> InstanceResult:
        if stopper is not None and stopper.stopped():
            raise EvalInterrupted  # whatever went wrong meanwhile may be the interruption itself
        result.total_s = round(time.monotonic() - started, 3)
        record = {k: v for k, v in asdict(result).items() if k != "reused"}
        write_text_atomic(inst_dir / "result.json", json.dumps(record, indent=2) + "\n")
        return result

    write_text_atomic(inst_dir / "patch.diff", patch_bytes(model_patch).decode("utf-8", "replace"))
    try:
        (model_patch or "").encode("utf-8")
    except UnicodeEncodeError as exc:
        result.error = (
            f"the patch is not valid Unicode text ({exc.reason}, {exc.object[exc.start]!r} at offset {exc.start})"
        )
        return finish()
    try:
        spec = spec or make_eval_spec(instance)
    except ValueError as exc:
        result.error = str(exc)
        return finish()
    write_text_atomic(inst_dir / "eval.sh", spec.eval_script)

    if not model_patch:  # as the official harness: only "" or None is empty; "\n" is run (and fails to apply)
        # Officially an empty patch is not run at all; it counts apart from resolved/unresolved.
        result.outcome = EMPTY_PATCH
        return finish()

    if client is None:
        client = docker_client()
    apply_log: list[str] = []
    sandbox = None
    try:
        result.image = resolve_image(instance, client, options.registry_prefix, options.allow_pull)
        t0 = time.monotonic()
        sandbox = _make_sandbox(_sandbox_config(result.image, options), client)
        if stopper is not None:
            stopper.add(sandbox)
        with sandbox:
            result.timings["start_s"] = round(time.monotonic() - t0, 3)
            sandbox.write_file(PATCH_PATH, model_patch.encode("utf-8"))
            t1 = time.monotonic()
            for command in APPLY_COMMANDS:
                run = sandbox.run(f"cd {REPO_DIR} && {command} {PATCH_PATH}", timeout=120)
                apply_log.append(f"$ {command} {PATCH_PATH}\n{run.output}\n(exit {run.exit_code})\n")
                if run.exit_code == 0:
                    result.apply_command = command
                    break
            result.timings["apply_s"] = round(time.monotonic() - t1, 3)
            if not result.apply_command:
                apply_log.append(f"{APPLY_PATCH_FAIL}\n")
                write_text_atomic(inst_dir / "apply.log", "".join(apply_log))
                result.error = (
                    f"{APPLY_PATCH_FAIL}: the patch applies neither with git apply nor with patch (see apply.log)"
                )
                return finish()
            apply_log.append(f"{APPLY_PATCH_PASS}\n")
            write_text_atomic(inst_dir / "apply.log", "".join(apply_log))

            sandbox.write_file(EVAL_SCRIPT_PATH, spec.eval_script.encode("utf-8"), mode=0o755)
            run = sandbox.run(f"/bin/bash {EVAL_SCRIPT_PATH} > {TEST_OUTPUT_PATH} 2>&1", timeout=options.timeout)
            result.test_run_s = round(run.elapsed, 3)
            timed_out = run.status == RunStatus.TIMEOUT
            try:
                data, dropped = sandbox.read_head_tail(TEST_OUTPUT_PATH, options.max_log_bytes)
            except (OSError, SandboxError):
                if stopper is not None and stopper.stopped():
                    raise EvalInterrupted from None
                data, dropped = b"", 0
            test_log = data.decode("utf-8", errors="replace")
            if dropped:
                half = options.max_log_bytes // 2
                head = data[:half].decode("utf-8", errors="replace")
                tail = data[half:].decode("utf-8", errors="replace")
                test_log = f"{head}\n[... {dropped} bytes cut ...]\n{tail}\n\n[{_cut_note(dropped, options)}]\n"
            if timed_out:
                test_log += f"\n\nTimeout error: {options.timeout:g} seconds exceeded.\n"
            write_text_atomic(inst_dir / "test_output.txt", test_log)
            t2 = time.monotonic()
        result.timings["close_s"] = round(time.monotonic() - t2, 3)
        if timed_out:
            result.error = f"Tests timed out after {options.timeout:g} seconds."
            return finish()
        if stopper is not None and stopper.stopped():
            raise EvalInterrupted
        report = grade(spec, model_patch, test_log)
        write_text_atomic(inst_dir / "report.json", json.dumps(report, indent=4) + "\n")
        entry = report[instance.instance_id]
        if not entry["patch_successfully_applied"]:
            # The official harness wrote a report here, so it counts the instance completed and unresolved.
            result.outcome = UNRESOLVED
            result.error = (
                "The eval script did not reach the tests (test patch failed or script died); see test_output.txt."
            )
        else:
            result.outcome = RESOLVED if entry["resolved"] else UNRESOLVED
        if dropped:
            result.error = "; ".join(filter(None, [result.error, _cut_note(dropped, options)]))
        return finish()
    except SandboxError as exc:
        if stopper is not None and stopper.stopped():
            raise EvalInterrupted from None
        if apply_log:
            write_text_atomic(inst_dir / "apply.log", "".join(apply_log))
        result.error = str(exc)
        return finish()
    finally:
        if stopper is not None and sandbox is not None:
            stopper.discard(sandbox)


def load_done(out_dir: Path, instance_id: str, key: dict[str, str] | None = None) -> InstanceResult | None:
    """The recorded outcome of an instance evaluated earlier for the same `key` (`eval_key`; None: any);
    errors are evaluated again."""
    path = out_dir / instance_id / "result.json"
    try:
        data = json.loads(path.read_text())
        done = InstanceResult(**data)
    except (OSError, ValueError, TypeError):
        return None
    if key is not None and done.key != key:
        return None
    done.reused = True
    return done if done.outcome != ERROR else None


def evaluate_predictions(
    instances: list[SWEBenchInstance],
    predictions: list[Prediction],
    out_dir: Path,
    workers: int = 1,
    options: EvalOptions | None = None,
    on_result: Callable[[InstanceResult], None] | None = None,
    executor: Any = None,
) -> tuple[dict, list[InstanceResult]]:
    """Evaluate every prediction whose instance is in `instances`, `workers` at a time.

    Returns (the official summary, the per-instance results); the summary is also OUT/report.json.
    `executor`: a `cwm_agent.runs.executor` executor other than the local one (Ray) runs each instance
    where it places it; its files come back into `out_dir`, written here.
    """
    options = options or EvalOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {inst.instance_id: inst for inst in instances}
    todo = [p for p in predictions if p.instance_id in by_id]
    results: dict[str, InstanceResult] = {}
    client = None
    if executor is not None and executor.name != "local":
        return _evaluate_elsewhere(executor, instances, by_id, todo, out_dir, workers, options, on_result)

    stopper = _Stopper()
    cleanup.signalled.clear()  # a signal handled before this evaluation is not about it

    def one(pred: Prediction) -> InstanceResult:
        instance = by_id[pred.instance_id]
        if not options.rerun:
            done = load_done(out_dir, pred.instance_id, eval_key(instance, pred.model_patch))
            if done is not None:
                return done
        if stopper.stopped():
            raise EvalInterrupted
        try:
            return evaluate_instance(instance, pred.model_patch, out_dir, options, client, stopper=stopper)
        except EvalInterrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - one instance's surprise must not end the evaluation
            log.exception("evaluating %s failed", pred.instance_id)
            return InstanceResult(pred.instance_id, ERROR, error=f"unexpected error: {type(exc).__name__}: {exc}")

    if any(p.model_patch for p in todo):
        client = docker_client()
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="swebench-eval")
    futures = [pool.submit(one, p) for p in todo]
    try:
        for future in as_completed(futures):
            try:
                res = future.result()
            except EvalInterrupted:
                continue
            results[res.instance_id] = res
            if on_result:
                on_result(res)
    except BaseException:
        # Ctrl-C or a signal: queued instances never start, running ones lose their containers now
        # (their tests stop at once) and record nothing; finished ones are kept.
        interrupted = True
        stopper.stop()
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        summary = write_summary(out_dir, instances, todo, results, options, interrupted)
    ordered = [results[p.instance_id] for p in todo if p.instance_id in results]
    return summary, ordered


def write_summary(
    out_dir: Path,
    instances: list[SWEBenchInstance],
    todo: list[Prediction],
    results: dict[str, InstanceResult],
    options: EvalOptions,
    interrupted: bool = False,
) -> dict:
    """OUT/report.json: the official summary, plus this evaluation's run id, whether it was interrupted,
    and how many verdicts were evaluated now and how many reused from earlier ones."""
    summary = make_summary(
        [i.instance_id for i in instances],
        [p.instance_id for p in todo],
        {k: r.outcome for k, r in results.items()},
    )
    reused = sum(1 for r in results.values() if r.reused)
    summary.update(
        run_id=options.run_id,
        interrupted=interrupted,
        evaluated_now=len(results) - reused,
        reused=reused,
        not_evaluated=len({p.instance_id for p in todo} - set(results)),
    )
    write_text_atomic(out_dir / "report.json", json.dumps(summary, indent=4) + "\n")
    return summary


def evaluate_item(item: tuple[SWEBenchInstance, str | None], ctx: tuple[Path, EvalOptions]) -> InstanceResult:
    """`evaluate_instance` as an executor's `fn(item, ctx)`: item = (instance, patch), ctx = (folder, options)."""
    instance, patch = item
    out_dir, options = ctx
    return evaluate_instance(instance, patch, out_dir, options)


@dataclass
class _EvalContext:
    """An executor's `make_ctx` for `evaluate_item`: the item's folder (where it runs) and the options."""

    options: EvalOptions

    def __call__(self, item: Any, place: Any) -> tuple[Path, EvalOptions]:
        return place.out_dir, self.options


def _evaluate_elsewhere(executor, instances, by_id, todo, out_dir, workers, options, on_result):
    """`evaluate_predictions` through an executor: instances done before are skipped here, the rest run
    where the executor puts them; the summary is written here as results come."""
    import asyncio

    from cwm_agent.runs.executor import map_items
    from cwm_agent.swebench.images import candidate_images

    results: dict[str, InstanceResult] = {}
    items = []
    for pred in todo:
        key = eval_key(by_id[pred.instance_id], pred.model_patch)
        done = None if options.rerun else load_done(out_dir, pred.instance_id, key)
        if done is not None:
            results[done.instance_id] = done
            if on_result:
                on_result(done)
        else:
            items.append((by_id[pred.instance_id], pred.model_patch))

    def images(item: tuple[SWEBenchInstance, str | None]) -> list[str] | None:
        if not item[1] or options.allow_pull:
            return None  # an empty patch needs no image; a pulled one can be had anywhere
        return candidate_images(item[0], options.registry_prefix)

    def finished(item: Any, res: InstanceResult) -> None:
        results[res.instance_id] = res
        if on_result:
            on_result(res)

    async def run() -> None:
        wanted = [name for item in items for name in images(item) or []]
        await executor.open(out_dir, images=wanted)
        try:
            await map_items(
                executor, items, evaluate_item, _EvalContext(options), finished,
                key=lambda item: item[0].instance_id, workers=executor.capacity or workers, images=images,
            )  # fmt: skip
        finally:
            await executor.close()

    try:
        if items:
            asyncio.run(run())
    finally:
        summary = write_summary(out_dir, instances, todo, results, options)
    return summary, [results[p.instance_id] for p in todo if p.instance_id in results]


def gold_predictions(instances: list[SWEBenchInstance], model_name: str = "gold") -> list[Prediction]:
    """The dataset's own patches as predictions (the sanity check to run first)."""
    return [
        Prediction(instance_id=i.instance_id, model_name_or_path=model_name, model_patch=i.patch) for i in instances
    ]
