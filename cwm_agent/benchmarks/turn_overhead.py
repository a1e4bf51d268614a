"""What the harness itself costs per turn: ours against a naive harness, in the same run.

    python -m cwm_agent.benchmarks.turn_overhead [--turns 200] [--image IMAGE]

Both harnesses play the same trivial episode against one scripted OpenAI-compatible server (a
separate process on 127.0.0.1, so its work is not counted): every reply runs `true`. The number is
the time from a reply's arrival in the harness to its next request leaving, the harness's whole
share of a turn (parsing, the tool in the container, counting, rendering), plus the harness's CPU
seconds per turn. The naive harness does what the simplest agents do: one `docker exec` per
command and a text prompt re-sent each turn, with no token counting at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from cwm_agent.agent.config import load_config
from cwm_agent.agent.run import run_task
from cwm_agent.agent.task import Task
from cwm_agent.model.base import Prompt
from cwm_agent.model.client import Completion, ModelClient, SamplingParams
from cwm_agent.sandbox.base import PROJECT_LABEL
from cwm_agent.sandbox.images import BASE_IMAGE

P50_GOAL_MS = 3.0
REPLY = "Next.\n</think>\n<tool: bash>\ntrue\n</tool>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(replies: int) -> tuple[subprocess.Popen, str]:
    script = Path(tempfile.mkdtemp()) / "replies.json"
    script.write_text(json.dumps([REPLY] * replies))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.model.scripted_server", "--replies", str(script), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/health", timeout=0.5)
            return proc, f"{url}/v1"
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the scripted server did not start")


class TimedModel:
    """The real HTTP client, with the moments each reply arrived and each request left."""

    def __init__(self, client: ModelClient) -> None:
        self.client = client
        self.arrived: list[float] = []
        self.left: list[float] = []
        self.cpu: list[float] = []

    async def generate(self, prompt: Prompt, sampling: SamplingParams) -> Completion:
        self.left.append(time.perf_counter())
        self.cpu.append(cpu())
        completion = await self.client.generate(prompt, sampling)
        self.arrived.append(time.perf_counter())
        return completion

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def gaps(self) -> list[float]:
        return [nxt - got for got, nxt in zip(self.arrived, self.left[1:])]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ours(turns: int, image: str, tokenizer: str | None) -> tuple[list[float], float]:
    server, url = start_server(turns + 5)
    try:
        repo = Path(tempfile.mkdtemp()) / "repo"
        repo.mkdir()
        (repo / "README").write_text("x\n")
        git = ["git", "-c", "user.email=b@b", "-c", "user.name=b"]
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
        model_cfg = {"url": url, "tokenizer": tokenizer} if tokenizer else {"url": url}
        config = load_config(None, {"agent": {"max_turns": turns}, "model": model_cfg, "sandbox": {"image": image}})

        async def go() -> TimedModel:
            async with ModelClient(config.model) as client:
                timed = TimedModel(client)
                await run_task(Task(task_id="bench", problem_statement="noop", repo_source=str(repo)), config, timed,
                               Path(tempfile.mkdtemp()) / "t.jsonl")  # fmt: skip
                return timed

        timed = asyncio.run(go())
        # CPU of the process (all threads) from the second request to the last: the turns alone, no set-up.
        per_turn = (timed.cpu[-1] - timed.cpu[1]) / max(1, len(timed.cpu) - 2)
        return timed.gaps(), per_turn
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


def naive(turns: int, image: str) -> tuple[list[float], float]:
    """One `docker exec` per command, the prompt re-sent as text every turn, nothing counted."""
    server, url = start_server(turns + 5)
    name = f"cwm-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--rm", "--network", "none", "--label", f"{PROJECT_LABEL}=cwm-agent",
                    "--name", name, image, "sleep", "infinity"], check=True, capture_output=True)  # fmt: skip
    try:
        gaps: list[float] = []
        prompt = "<|begin_of_text|>system: you are an agent\nuser: noop\n"
        before = None
        with httpx.Client(timeout=30) as http:
            model = http.get(f"{url}/models").json()["data"][0]["id"]
            arrived = None
            for _ in range(turns):
                left = time.perf_counter()
                if arrived is not None:
                    gaps.append(left - arrived)
                    before = cpu() if before is None else before
                reply = http.post(f"{url}/completions", json={"model": model, "prompt": prompt, "max_tokens": 100})
                text = reply.json()["choices"][0]["text"]
                arrived = time.perf_counter()
                command = text.split("<tool: bash>\n", 1)[1].split("\n</tool>", 1)[0]
                out = subprocess.run(["docker", "exec", name, "bash", "-c", command], capture_output=True, text=True)
                prompt += text + "\n" + out.stdout + out.stderr
        return gaps, (cpu() - (before or cpu())) / max(1, turns - 2)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        server.send_signal(signal.SIGTERM)
        server.wait(10)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--image", default=BASE_IMAGE)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    rows = []
    try:
        from cwm_agent.model.tokenizer import find_bpe_file

        find_bpe_file()
        rows.append(("cwm-agent, local CWM tokenizer", *ours(args.turns, args.image, "cwm")))
    except Exception as exc:  # noqa: BLE001 - the row says why it is missing
        print(f"(no local tokenizer row: {exc})")
    rows.append(("cwm-agent, server /tokenize", *ours(args.turns, args.image, None)))
    rows.append(("naive: docker exec per command", *naive(args.turns, args.image)))
    naive_p50 = statistics.median(rows[-1][1]) * 1000
    print(f"harness time per turn, {args.turns} trivial turns (`true`), reply arrival -> next request:")
    print(f"{'harness':34} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms/turn':>12} {'p50 vs naive':>13}")
    for name, gaps, cpu_per_turn in rows:
        p50 = statistics.median(gaps) * 1000
        print(f"{name:34} {p50:8.2f} {pct(gaps, 0.95):8.2f} {cpu_per_turn * 1000:12.2f} {naive_p50 / p50:12.1f}x")
    best = min(statistics.median(gaps) * 1000 for _, gaps, _ in rows[:-1])
    print(f"goal: p50 under {P50_GOAL_MS} ms: {'met' if best < P50_GOAL_MS else 'NOT met'} ({best:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
