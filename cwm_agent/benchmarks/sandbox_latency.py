"""How long one command takes: our persistent session against a fresh `docker exec` per command.

    python -m cwm_agent.benchmarks.sandbox_latency [--n 200] [--image IMAGE] [--no-mini-swe-agent]

All rows run `true` on the same image, on an already running container, after a few warm-up
calls: through the session (one attached stream), through `exec_run` of the docker SDK, through
the `docker exec` command line, and through mini-swe-agent's own `DockerEnvironment` (from
PyPI: imported when installed, else installed into a throwaway venv; when that fails the row
says why). It also times container start to the first command's result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cwm_agent.sandbox.base import PROJECT_LABEL, RUN_ID_LABEL, SandboxConfig
from cwm_agent.sandbox.images import BASE_IMAGE

SESSION_P50_GOAL_MS = 5.0
SPEEDUP_GOAL = 10.0


@dataclass
class Row:
    name: str
    samples: list[float]  # seconds
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) * 1000


def timed(fn: Callable[[], object], n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


# Runs inside the interpreter that has mini-swe-agent; prints one JSON line of seconds.
_MSA_SCRIPT = """
import json, sys, time
from minisweagent.environments.docker import DockerEnvironment
image, n, labels = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
run_args = ["--rm", "--network", "none"]
for k, v in labels.items():
    run_args += ["--label", f"{k}={v}"]
env = DockerEnvironment(image=image, cwd="/testbed", run_args=run_args)
try:
    for _ in range(5):
        env.execute({"command": "true"})
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = env.execute({"command": "true"})
        out.append(time.perf_counter() - t)
        assert r["returncode"] == 0, r
    print(json.dumps(out))
finally:
    pass  # the caller removes the container by label, synchronously
"""


def _mini_swe_agent_python(workdir: Path) -> tuple[str | None, str]:
    """A Python that can import minisweagent, installing it into a venv in `workdir` if needed."""
    try:
        import minisweagent  # noqa: F401

        return sys.executable, "installed"
    except ImportError:
        pass
    venv = workdir / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        python = str(venv / "bin" / "python")
        proc = subprocess.run(
            [python, "-m", "pip", "install", "-q", "mini-swe-agent"], capture_output=True, text=True, timeout=300
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not make a venv: {exc}"
    if proc.returncode != 0:
        return None, "pip install mini-swe-agent failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('mini-swe-agent'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return python, f"v{version}, throwaway venv"


def bench_mini_swe_agent(image: str, n: int, client) -> Row:
    if shutil.which("docker") is None:
        return Row("mini-swe-agent DockerEnvironment", [], "skipped: no `docker` CLI (it shells out to it)")
    run_id = "bench-msa-" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="cwm-bench-") as tmp:
        python, note = _mini_swe_agent_python(Path(tmp))
        if python is None:
            return Row("mini-swe-agent DockerEnvironment", [], f"not measured: {note}")
        labels = json.dumps({PROJECT_LABEL: "cwm-agent", RUN_ID_LABEL: run_id})
        try:
            proc = subprocess.run(
                [python, "-c", _MSA_SCRIPT, image, str(n), labels], capture_output=True, text=True, timeout=600, cwd=tmp
            )
        except subprocess.TimeoutExpired:
            return Row("mini-swe-agent DockerEnvironment", [], "not measured: timed out after 600 s")
        finally:
            from cwm_agent.sandbox.cleanup import prune

            prune(run_id, client=client)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
        if proc.returncode != 0 or not lines:
            return Row(
                "mini-swe-agent DockerEnvironment", [], f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
            )
        return Row("mini-swe-agent DockerEnvironment", json.loads(lines[-1]), note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="commands per method (default 200)")
    parser.add_argument("--image", default=BASE_IMAGE, help=f"image to use (default {BASE_IMAGE})")
    parser.add_argument("--no-mini-swe-agent", action="store_true", help="skip the mini-swe-agent row")
    args = parser.parse_args(argv)

    from cwm_agent.sandbox import SandboxError, make_sandbox
    from cwm_agent.sandbox.images import docker_client

    try:
        client = docker_client()
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    run_id = "bench-" + uuid.uuid4().hex[:8]
    try:
        t = time.perf_counter()
        sandbox = make_sandbox(SandboxConfig(image=args.image, run_id=run_id), client=client)
        sandbox.start()
        first = sandbox.run("true")
        start_to_first = time.perf_counter() - t
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with sandbox:
        assert first.exit_code == 0
        rows.append(Row("session (one attached stream)", timed(lambda: sandbox.run("true"), args.n)))
        container = sandbox.container
        rows.append(
            Row("docker SDK exec_run per command", timed(lambda: container.exec_run(["bash", "-c", "true"]), args.n))
        )
        if shutil.which("docker"):
            cli = ["docker", "exec", "-w", "/testbed", container.id, "bash", "-c", "true"]
            rows.append(Row("`docker exec` CLI per command", timed(lambda: subprocess.run(cli, check=True), args.n)))
        else:
            rows.append(Row("`docker exec` CLI per command", [], "skipped: no `docker` CLI"))
    if not args.no_mini_swe_agent:
        rows.append(bench_mini_swe_agent(args.image, args.n, client))
    with make_sandbox(SandboxConfig(backend="local")) as local:
        rows.append(Row("local session (no container)", timed(lambda: local.run("true"), args.n), "for reference"))

    session = rows[0]
    print(f"\nRound trip of `true` on {args.image}, n={args.n} per method (after warm-up):\n")
    print(f"{'method':36} {'p50 ms':>8} {'p95 ms':>8} {'p50 / session':>14}  note")
    for row in rows:
        if not row.samples:
            print(f"{row.name:36} {'-':>8} {'-':>8} {'-':>14}  {row.note}")
            continue
        print(f"{row.name:36} {row.p50:8.2f} {row.pct(0.95):8.2f} {row.p50 / session.p50:13.1f}x  {row.note}")
    print(f"\ncontainer start to first command's result: {start_to_first * 1000:.0f} ms")
    fastest_exec = min((r.p50 for r in rows[1:] if r.samples and "exec" in r.name), default=None)
    ok_p50 = session.p50 < SESSION_P50_GOAL_MS
    print(f"goal session p50 < {SESSION_P50_GOAL_MS:g} ms: {'met' if ok_p50 else 'NOT met'} ({session.p50:.2f} ms)")
    if fastest_exec is not None:
        speedup = fastest_exec / session.p50
        print(
            f"goal >= {SPEEDUP_GOAL:g}x faster than the fastest docker exec: "
            f"{'met' if speedup >= SPEEDUP_GOAL else 'NOT met'} ({speedup:.0f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
