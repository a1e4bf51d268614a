"""`swebench run` end to end without a GPU, as the README shows: the replayed gold model, a run, its evaluation."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from cwm_agent.swebench.local import INSTANCES_FILE

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
CLI = [sys.executable, "-m", "cwm_agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_replayed_gold_model_drives_a_run_whose_evaluation_resolves_everything(tmp_path, local_images):
    port = free_port()
    server = subprocess.Popen([*CLI, "swebench", "replay-gold", "--dataset", str(INSTANCES_FILE), "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(100):
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert "not CWM" in models["data"][0]["id"]
        args = [
            "run",
            "-d",
            str(INSTANCES_FILE),
            "-o",
            str(tmp_path / "run"),
            "-w",
            "2",
            "--model-url",
            f"http://127.0.0.1:{port}/v1",
        ]
        run = subprocess.run([*CLI, "swebench", *args], capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr
    finally:
        server.send_signal(signal.SIGINT)
        _, said = server.communicate(timeout=20)
    assert "REPLAYED MODEL" in said and server.returncode == 0
    preds = [json.loads(line) for line in (tmp_path / "run" / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["model_patch"].startswith("diff --git") for p in preds)
    evaluation = subprocess.run([*CLI, "swebench", "eval", "-p", str(tmp_path / "run" / "preds.jsonl"), "-d",
                                 str(INSTANCES_FILE), "-o", str(tmp_path / "run" / "eval")],
                                capture_output=True, text=True, timeout=240)  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["resolved_instances"] == 3
