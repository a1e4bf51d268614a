"""Mutate-fix tasks generated per minute on one image: ours against a naive peer, same seed, same run.

    python -m cwm_agent.benchmarks.forage_throughput [--image IMAGE] [--count 5] [--seed 0]

Ours (`forage tasks`): one long-lived container validates every candidate (write the file, run only
the tests that cover the mutated function with `-x`, restore it; the whole suite only for survivors).
The naive peer validates each candidate in its own fresh container and runs the whole suite. Both
try the candidates in the same order, so they must keep the same tasks; the script checks that.
Prints tasks per minute (whole generation: baseline with coverage, validation, one image per task)
and candidates validated per minute, with the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from cwm_agent.forager.generate import ForageOptions, generate_tasks

DEFAULT_IMAGE = "sweb.eval.x86_64.cwm-local__more-itertools-1:latest"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="repository image (tests at /testbed)")
    parser.add_argument("--count", type=int, default=5, help="tasks to make with each approach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-candidates", type=int, default=None, help="stop after trying this many")
    parser.add_argument("--jobs", type=int, default=1, help="our candidates validated at once (containers)")
    args = parser.parse_args(argv)

    from cwm_agent.swebench.local.build import build_local_images

    if args.image == DEFAULT_IMAGE:
        build_local_images()
    options = ForageOptions(
        image=args.image, count=args.count, seed=args.seed, max_candidates=args.max_candidates, run_id="forage-bench"
    )
    ours_name = "ours: one container, covering tests first"
    if args.jobs > 1:
        ours_name = f"ours: {args.jobs} containers, covering tests first"
    runs = {}
    for name, fresh in ((ours_name, False), ("naive: fresh container each", True)):
        opts = options.model_copy(update={"jobs": args.jobs if not fresh else 1})
        rows, stats = generate_tasks(opts, fresh_container_each=fresh)
        runs[name] = (rows, stats)
        # removed at once, so that the other approach builds its images too (not from this one's cache)
        subprocess.run(["docker", "rmi", "-f", *sorted({r["image"] for r in rows})], capture_output=True)
    (ours_rows, ours), (naive_rows, naive) = runs.values()
    if [r["patch"] for r in ours_rows] != [r["patch"] for r in naive_rows]:
        print("error: the two approaches kept different tasks", file=sys.stderr)
        return 1
    print(f"image {args.image}: {ours.passing_tests} passing tests, {ours.candidates} candidate mutations")
    print(
        f"{'approach':<44} {'tasks':>5} {'tried':>5} {'total s':>8} {'tasks/min':>9} "
        f"{'validate s':>10} {'tried/min':>9} {'tests/try':>9} {'build s':>7}"
    )
    for name, (rows, s) in runs.items():
        total, validate = s.seconds["total"], s.seconds["validate"]
        print(
            f"{name:<44} {len(rows):>5} {s.tried:>5} {total:>8.1f} {60 * len(rows) / total:>9.1f} "
            f"{validate:>10.1f} {60 * s.tried / validate:>9.1f} {s.tests_run / max(1, s.tried):>9.0f} "
            f"{s.seconds['build']:>7.1f}"
        )
    speed = (len(ours_rows) / ours.seconds["total"]) / (len(naive_rows) / naive.seconds["total"])
    vspeed = (ours.tried / ours.seconds["validate"]) / (naive.tried / naive.seconds["validate"])
    print(f"ours vs naive: {speed:.1f}x tasks/min, {vspeed:.1f}x candidates validated/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
