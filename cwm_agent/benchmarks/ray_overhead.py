"""The Ray executor's overhead per episode against the local executor, on the same batch.

    python -m cwm_agent.benchmarks.ray_overhead [--rollouts 1 4] [--slots 2] [--turns 3] [--ray-address HOST:PORT]

The batch: every local SWE-bench instance (`cwm-agent swebench build-local`) x K rollouts, each
episode `--turns` turns of a scripted model (a `bash` command per turn, over real HTTP) in a real
container, run by `cwm-agent swebench run` as a user runs it: with `--executor local -w N` and with
`--executor ray` on a local cluster of a head and a worker node of `--slots` sandbox slots each
(N = 2 x slots: the same parallelism). Each executor runs a small and a large batch (K = 1 and 4), so
its wall time splits into a fixed cost per run (for Ray: joining the cluster, the image census, the
router actor, each node's worker processes, which belong to one driver) and a cost per episode (the
slope, in slot-seconds). Prints both for both executors and the per-episode ratio Ray / local. A last
line times the executors alone on empty items (no container, no model): the dispatch cost per item.

Without `--ray-address` the benchmark starts the cluster (`ray start` on 127.0.0.1, separate
processes) and stops exactly the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "NO_COLOR": "1", "COLUMNS": "200"}


def ray_cli() -> str:
    """The `ray` command of this Python's environment (a virtual environment's is not on PATH unless active)."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a node's workers are children of its raylet)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    for p in _descendants(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class LocalCluster:
    """A Ray cluster on 127.0.0.1: a head and worker nodes, each a `ray start --block` process with
    `slots` sandbox slots, stopped by killing exactly its process tree (never `ray stop`, which would
    end every Ray process of the host)."""

    def __init__(self, slots: int = 2, object_store_mb: int = 80) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.slots = slots
        self.object_store = object_store_mb << 20
        self.temp_dir = Path(f"/tmp/cwmray-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths have a limit
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(self.object_store),
                  "--resources", json.dumps({"sandbox_slots": self.slots}), "--block"]  # fmt: skip
        # The nodes' tasks make their temporary folders inside the cluster's, so a node killed mid-task
        # leaves nothing behind once the cluster is stopped.
        scratch = self.temp_dir / "t"
        scratch.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [ray_cli(), "start", *args, *common], env={**(env or RAY_ENV), "TMPDIR": str(scratch)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.nodes.append(proc)
        return proc

    def start(self, workers: int = 1, timeout: float = 120) -> LocalCluster:
        self._start(["--head", "--port", str(self.port), "--include-dashboard", "false", "--disable-usage-stats",
                     "--temp-dir", str(self.temp_dir)])  # fmt: skip
        for _ in range(workers):
            self.add_worker()
        self.wait_nodes(1 + workers, timeout)
        return self

    def add_worker(self, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self._start(["--address", self.address], env)

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = subprocess.run(
                [ray_cli(), "status", "--address", self.address], capture_output=True, text=True, env=RAY_ENV
            ).stdout
            if status.split("Active:", 1)[-1].split("Pending:", 1)[0].count("node_") >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"the local Ray cluster did not reach {count} nodes in {timeout:.0f} s")

    def stop_node(self, proc: subprocess.Popen) -> None:
        """The node's processes all at once, as a crashed host."""
        _kill_tree(proc.pid)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                _kill_tree(proc.pid, signal.SIGTERM)
        time.sleep(2)
        for proc in reversed(self.nodes):
            _kill_tree(proc.pid)
            proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


LOOK = "I look around first.\n</think>\n<tool: bash>\nls /testbed | head -5\n</tool>"


def _policy(request) -> str:
    return LOOK


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "cwm-agent"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]


def run_batch(out: Path, url: str, rollouts: int, turns: int, extra: list[str]) -> float:
    """One `swebench run` of the batch; its wall seconds."""
    from cwm_agent.swebench.local import INSTANCES_FILE

    args = [*_cli(), "swebench", "run", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--rollouts",
            str(rollouts), "--model-url", url, "-c", f"agent.max_turns={turns}", *extra]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=RAY_ENV)
    wall = time.monotonic() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"swebench run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


async def _empty(item: int, ctx) -> int:
    return item


def _ctx(item, place):
    return None


def dispatch_cost(address: str, items: int, slots: int) -> tuple[float, float]:
    """Seconds per empty item through the local executor and through Ray (after a warm-up)."""
    from cwm_agent.runs.executor import LocalExecutor, RayExecutor, map_items

    async def timed(executor) -> float:
        await executor.open(Path(tempfile.gettempdir()), endpoints=1)
        try:
            await map_items(executor, list(range(slots)), _empty, _ctx, lambda i, r: None, key=str, workers=slots)
            started = time.monotonic()
            await map_items(executor, list(range(items)), _empty, _ctx, lambda i, r: None, key=str, workers=slots)
            return (time.monotonic() - started) / items
        finally:
            await executor.close()

    local = asyncio.run(timed(LocalExecutor()))
    ray_executor = RayExecutor(address)
    ray_executor.connect()
    return local, asyncio.run(timed(ray_executor))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, nargs=2, default=[1, 4], metavar=("SMALL", "LARGE"),
                        help="rollouts per local instance (3 instances) in the small and the large batch")  # fmt: skip
    parser.add_argument("--slots", type=int, default=2, help="sandbox slots per Ray node (two nodes)")
    parser.add_argument("--turns", type=int, default=3, help="turns per episode")
    parser.add_argument("--ray-address", help="use this cluster instead of starting one (its slots must match)")
    args = parser.parse_args(argv)

    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray_overhead: Ray is not installed (pip install 'cwm-agent[ray]')", file=sys.stderr)
        return 2
    from cwm_agent.model.scripted_server import ScriptedServer
    from cwm_agent.swebench.local.build import build_local_images, local_instances

    build_local_images()
    instances = len(local_instances())
    small, large = (instances * k for k in args.rollouts)
    parallel = 2 * args.slots
    print(f"batches of {small} and {large} episodes ({instances} local instances x {args.rollouts[0]} and "
          f"{args.rollouts[1]} rollouts), {args.turns} turns each, {parallel} at once")  # fmt: skip

    cluster = None if args.ray_address else LocalCluster(args.slots).start(workers=1)
    address = args.ray_address or cluster.address
    executors = {"local": ["-w", str(parallel)], "ray": ["--executor", "ray", "--ray-address", address]}
    try:
        fits = {}
        with ScriptedServer(policy=_policy) as server, tempfile.TemporaryDirectory(prefix="cwm-ray-bench-") as tmp:
            for name, extra in executors.items():
                walls = [run_batch(Path(tmp, f"{name}-{k}"), server.url, k, args.turns, extra) for k in args.rollouts]
                # wall = fixed + episodes x cost / parallel: the slope is the cost of one more episode
                per_episode = (walls[1] - walls[0]) / (large - small) * parallel
                fixed = walls[0] - small * per_episode / parallel
                fits[name] = per_episode, fixed
                print(f"{name:>6}: {small} episodes {walls[0]:5.1f} s, {large} episodes {walls[1]:5.1f} s -> "
                      f"{per_episode:5.2f} slot-s per episode, {fixed:5.1f} s fixed per run", flush=True)  # fmt: skip
        (local_cost, local_fixed), (ray_cost, ray_fixed) = fits["local"], fits["ray"]
        print(f"per episode: ray/local {ray_cost / local_cost:.2f}x ({ray_cost - local_cost:+.2f} s per episode); "
              f"per run: Ray's start-up {ray_fixed - local_fixed:+.1f} s")  # fmt: skip
        local, remote = dispatch_cost(address, 200, parallel)
        print(f"dispatch alone (empty items): local {local * 1000:.3f} ms/item, ray {remote * 1000:.1f} ms/item")
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            if cluster is not None:
                cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
