"""The scripted server run standalone, as demos and the stand-in `vllm` use it."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cwm_agent.model.client import ModelClient, ModelConfig

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_standalone_server_replays_a_json_script_with_faults_and_stops_on_sigterm(tmp_path: Path):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps([{"fault": "http_503"}, "ok<|eot_id|>", {"text": "cut", "finish_reason": "length"}]))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.model.scripted_server", "--replies", str(replies), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/v1"
        assert line == f"scripted model server at {url} (3 replies)\n"

        async def ask():
            async with ModelClient(ModelConfig(url=url, retry_initial_delay=0.01)) as client:
                return await client.complete("hi"), await client.complete("hi ok")

        first, second = asyncio.run(ask())
        assert (first.text, first.attempts, first.finish_reason) == ("ok", 2, "stop")
        assert (second.text, second.finish_reason) == ("cut", "length")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_standalone_server_rejects_a_bad_script_clearly(tmp_path: Path):
    replies = tmp_path / "replies.yaml"
    replies.write_text("- {fault: explode}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cwm_agent.model.scripted_server", "--replies", str(replies),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot read the replies:") and "unknown fault 'explode'" in result.stderr
