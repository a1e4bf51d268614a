"""Evaluation throughput on the local SWE-bench instances, gold patches, at 1 and 2 workers.

    python -m cwm_agent.benchmarks.eval_throughput [--rounds 3] [--workers 1 2]

Prints instances per minute and the harness's own overhead per instance: everything but the eval
script's run inside the container (container start and removal, patch copy and apply, file writes,
grading), with its share of the instance's total time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cwm_agent.swebench.evaluate import EvalOptions, InstanceResult, evaluate_instance


def measure(workers: int, rounds: int, client) -> tuple[float, list[InstanceResult]]:
    """Evaluate every local instance `rounds` times with `workers` threads; (wall seconds, results)."""
    from cwm_agent.swebench.local.build import local_instances

    instances = local_instances()
    jobs = [(inst, r) for r in range(rounds) for inst in instances]
    options = EvalOptions(run_id="eval-throughput")
    with tempfile.TemporaryDirectory(prefix="cwm-eval-bench-") as tmp:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(
                pool.map(
                    lambda job: evaluate_instance(job[0], job[0].patch, Path(tmp) / f"round{job[1]}", options, client),
                    jobs,
                )
            )
        wall = time.monotonic() - started
    return wall, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each local instance is evaluated per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from cwm_agent.sandbox.images import docker_client
    from cwm_agent.swebench.local.build import build_local_images

    build_local_images()
    client = docker_client()
    measure(1, 1, client)  # warm-up: page cache, image layers
    print(
        f"{'workers':>7} {'evals':>5} {'wall s':>7} {'inst/min':>8} {'total s/inst':>12} {'tests s/inst':>12} "
        f"{'overhead s/inst':>15} {'overhead/total':>14}"
    )
    for workers in args.workers:
        wall, results = measure(workers, args.rounds, client)
        bad = [r for r in results if r.outcome != "resolved"]
        if bad:
            print(f"error: {bad[0].instance_id}: {bad[0].outcome} {bad[0].error}", file=sys.stderr)
            return 1
        total = statistics.mean(r.total_s for r in results)
        tests = statistics.mean(r.test_run_s for r in results)
        overhead = total - tests
        print(
            f"{workers:>7} {len(results):>5} {wall:>7.1f} {60 * len(results) / wall:>8.1f} {total:>12.2f} "
            f"{tests:>12.2f} {overhead:>15.2f} {overhead / total:>14.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
