"""`cwm-agent serve` with a stand-in `vllm` first on PATH (it starts the scripted server)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cwm_agent.model.client import ModelClient, ModelConfig

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-c", "from cwm_agent.cli import app; app()"]

STAND_IN = """#!{python}
# Stand-in for `vllm serve MODEL ... --host H --port N`: records its arguments, becomes the scripted server.
import json, os, sys
args = sys.argv[1:]
with open({argv_file!r}, "w") as out:
    json.dump(args, out)
value = lambda name: args[args.index(name) + 1]
os.execv(sys.executable, [sys.executable, "-m", "cwm_agent.model.scripted_server", "--model", args[1],
         "--host", value("--host"), "--port", value("--port"), "--replies", {replies!r}])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    """A bin folder holding a stand-in `vllm`; its arguments land in tmp_path/argv.json."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    replies = tmp_path / "replies.yaml"
    replies.write_text("- hello from the stand-in\n- {text: second, finish_reason: length}\n")
    script = bin_dir / "vllm"
    script.write_text(
        STAND_IN.format(python=sys.executable, argv_file=str(tmp_path / "argv.json"), replies=str(replies))
    )
    script.chmod(0o755)
    return bin_dir


def env_with(path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=path, **extra)
    return env


def test_serve_starts_vllm_waits_for_health_and_stops_it_on_ctrl_c(fake_vllm: Path, tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "facebook/cwm", "--tensor-parallel", "1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env_with(f"{fake_vllm}{os.pathsep}{os.environ['PATH']}"), start_new_session=True,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "--model-url" in line:
                break
        url = f"http://127.0.0.1:{port}/v1"
        assert f"vLLM is serving facebook/cwm at {url}\n" in lines, lines
        assert f"point cwm-agent at it with: --model-url {url}\n" in lines
        vllm_pid = int(lines[0].split("(pid ")[1].split(")")[0])
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200

        # The endpoint it printed works with the client.
        async def ask():
            async with ModelClient(ModelConfig(url=url)) as client:
                return await client.check(), await client.complete("hi")

        model, completion = asyncio.run(ask())
        assert model == "facebook/cwm" and completion.text == "hello from the stand-in"

        argv = json.loads((tmp_path / "argv.json").read_text())
        assert argv[:2] == ["serve", "facebook/cwm"] and "--enable-prefix-caching" in argv
        assert argv[argv.index("--tensor-parallel-size") + 1] == "1"
        assert argv[argv.index("--max-model-len") + 1] == "131072"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
        deadline = time.monotonic() + 5
        while alive(vllm_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(vllm_pid)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dry_run_prints_the_exact_vllm_command_without_vllm_or_gpu(tmp_path: Path):
    result = subprocess.run(
        [*CLI, "serve", "/models/cwm", "--dry-run", "--tensor-parallel", "2", "--port", "8123", "--quantization", "fp8",
         "--gpu-memory-utilization", "0.9", "--extra", "--served-model-name cwm"],
        capture_output=True, text=True, env=env_with(str(tmp_path)), timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "vllm serve /models/cwm --tensor-parallel-size 2 --max-model-len 131072 --enable-prefix-caching "
        "--enable-prompt-tokens-details --host 127.0.0.1 --port 8123 --gpu-memory-utilization 0.9 "
        "--quantization fp8 --served-model-name cwm\n"
    )


def test_missing_vllm_is_a_one_line_error_naming_the_install_command(tmp_path: Path):
    result = subprocess.run(
        [*CLI, "serve", "--tensor-parallel", "1"],
        capture_output=True,
        text=True,
        env=env_with(str(tmp_path)),
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == "error: vllm is not installed (no `vllm` on PATH): pip install 'cwm-agent[gpu]'\n"


def test_no_visible_gpu_is_a_clear_error(fake_vllm: Path, tmp_path: Path):
    result = subprocess.run(
        [*CLI, "serve"],
        capture_output=True,
        text=True,
        env=env_with(str(fake_vllm), CUDA_VISIBLE_DEVICES=""),
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: no GPU is visible") and "--tensor-parallel" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "argv.json").exists()


def test_vllm_dying_during_startup_shows_its_last_output(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(
        "#!/bin/sh\necho 'loading weights'\necho 'torch.OutOfMemoryError: CUDA out of memory' >&2\nexit 1\n"
    )
    (bin_dir / "vllm").chmod(0o755)
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "serve", "--tensor-parallel", "1", "--port", str(free_port()), "--quiet"],
        capture_output=True, text=True, env=env_with(f"{bin_dir}{os.pathsep}/usr/bin:/bin"), timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert "vLLM exited with code 1 before it was ready" in result.stderr
    assert "CUDA out of memory" in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_reported_before_starting_vllm(fake_vllm: Path, tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [*CLI, "serve", "--tensor-parallel", "1", "--port", str(port)],
            capture_output=True, text=True, env=env_with(str(fake_vllm)), timeout=30,
        )  # fmt: skip
    assert result.returncode == 2 and f"port {port}" in result.stderr and "--port" in result.stderr
    assert not (tmp_path / "argv.json").exists()


def test_an_unwritable_log_file_is_reported_before_starting_vllm(fake_vllm: Path, tmp_path: Path):
    log_file = tmp_path / "no-such-dir" / "vllm.log"
    result = subprocess.run(
        [*CLI, "serve", "--tensor-parallel", "1", "--port", str(free_port()), "--log-file", str(log_file)],
        capture_output=True, text=True, env=env_with(str(fake_vllm)), timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "--log-file" in result.stderr and str(log_file) in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "argv.json").exists()
