"""Start vLLM's OpenAI-compatible server for CWM, wait until it is healthy, stop it cleanly.

vLLM runs in its own process group so that a terminal's Ctrl-C reaches only us; we then stop the
whole group ourselves (SIGINT, then SIGTERM, then SIGKILL after grace periods), which also ends
vLLM's engine worker processes.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from pydantic import BaseModel, ConfigDict, Field

from cwm_agent.errors import UserError

DEFAULT_MODEL = "facebook/cwm"
INSTALL_HINT = "pip install 'cwm-agent[gpu]'"


class ServeError(UserError, RuntimeError):
    """A problem the user can fix (missing vllm, no GPU, busy port, startup failure).

    `exit_code`: 2 for what was wrong before vLLM started, 1 when vLLM itself failed."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    """Hugging Face id or local path."""
    tensor_parallel: int | None = Field(None, ge=1)
    """GPUs to shard over; None: every visible GPU."""
    max_model_len: int = 131072
    port: int = 8000
    host: str = "127.0.0.1"
    gpu_memory_utilization: float | None = None
    quantization: str | None = None
    """e.g. fp8, to fit CWM on one 80 GB card."""
    extra: list[str] = Field(default_factory=list)
    """Further `vllm serve` arguments, passed as they are."""
    startup_timeout: float = 1800.0
    """Seconds to wait for /health (downloading and loading 32B weights takes a while)."""
    stop_grace: float = 30.0
    """Seconds vLLM gets after SIGINT before SIGTERM, and again before SIGKILL."""
    log_file: Path | None = None


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d for d in visible.replace(" ", "").split(",") if d]
        # CUDA stops at the first invalid id ("-1" is the usual way to hide every GPU).
        count = 0
        for d in ids:
            if d.startswith("-"):
                break
            count += 1
        return count
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def find_vllm() -> str:
    path = shutil.which("vllm")
    if path is None:
        raise ServeError(f"vllm is not installed (no `vllm` on PATH): {INSTALL_HINT}")
    return path


def build_command(opts: ServeOptions, tensor_parallel: int, vllm: str = "vllm") -> list[str]:
    """The `vllm serve` command line: prefix caching on (every turn reuses the previous prompt) and
    prompt token details on (so replies report cached tokens)."""
    cmd = [
        vllm, "serve", opts.model,
        "--tensor-parallel-size", str(tensor_parallel),
        "--max-model-len", str(opts.max_model_len),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--host", opts.host,
        "--port", str(opts.port),
    ]  # fmt: skip
    if opts.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
    if opts.quantization:
        cmd += ["--quantization", opts.quantization]
    return cmd + list(opts.extra)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def endpoint_url(opts: ServeOptions) -> str:
    host = _client_host(opts.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{opts.port}/v1"


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def resolve_tensor_parallel(opts: ServeOptions) -> int:
    if opts.tensor_parallel is not None:
        return opts.tensor_parallel  # the user knows their machine; no detection
    gpus = visible_gpus()
    if gpus == 0:
        raise ServeError(
            "no GPU is visible (CUDA_VISIBLE_DEVICES and `nvidia-smi -L` show none); vLLM needs one. "
            "Pass --tensor-parallel N to skip this check"
        )
    return gpus


class _LogPump(threading.Thread):
    """Copies vLLM's output to our stderr (unless quiet) and a log file, keeping the last lines."""

    def __init__(self, stream, quiet: bool, log: TextIO | None):
        super().__init__(name="vllm-log", daemon=True)
        self.stream, self.quiet, self.log = stream, quiet, log
        self.tail: collections.deque[str] = collections.deque(maxlen=40)

    def run(self) -> None:
        log = self.log
        try:
            for line in iter(self.stream.readline, ""):
                self.tail.append(line.rstrip("\n"))
                if log:
                    log.write(line)
                    log.flush()
                if not self.quiet:
                    sys.stderr.write(line)
                    sys.stderr.flush()
        finally:
            if log:
                log.close()


def _health_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process_group(proc: subprocess.Popen, grace: float) -> int:
    """SIGINT the group, then SIGTERM, then SIGKILL, each after `grace` seconds; return the exit code."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Engine workers left behind by a leader that died first share its group; end them too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait()


def serve(opts: ServeOptions, *, quiet: bool = False, echo: Callable[[str], None] = print) -> int:
    """Run vLLM until Ctrl-C/SIGTERM; return the exit code. Raises ServeError before starting it."""
    vllm = find_vllm()
    tensor_parallel = resolve_tensor_parallel(opts)
    if not _port_free(opts.host, opts.port):
        raise ServeError(f"port {opts.port} on {opts.host} is already in use (another server?); pass --port")
    cmd = build_command(opts, tensor_parallel, vllm)
    url = endpoint_url(opts)
    health = url[: -len("/v1")] + "/health"
    # Opened here, not in the log thread: a failure there would leave vLLM's output undrained
    # (vLLM then blocks on a full pipe) and only print a thread's traceback.
    try:
        log = opts.log_file.open("a") if opts.log_file else None
    except OSError as exc:
        raise ServeError(f"--log-file {opts.log_file}: cannot open it for writing ({exc.strerror or exc})") from None

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace", start_new_session=True,
        )  # fmt: skip
        pump = _LogPump(proc.stdout, quiet, log)
        pump.start()
        echo(f"started vLLM (pid {proc.pid}): {shlex.join(['vllm', *cmd[1:]])}")
        try:
            return _supervise(proc, pump, opts, url, health, stop, echo)
        finally:
            stop_process_group(proc, opts.stop_grace)
            pump.join(timeout=5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(proc, pump, opts: ServeOptions, url: str, health: str, stop: threading.Event, echo) -> int:
    deadline = time.monotonic() + opts.startup_timeout
    while not _health_ok(health):
        if proc.poll() is not None:
            pump.join(timeout=5)
            tail = "\n".join(pump.tail) or "(no output)"
            raise ServeError(
                f"vLLM exited with code {proc.returncode} before it was ready; its last output:\n{tail}", 1
            )
        if stop.is_set():
            echo("stopping vLLM (interrupted during startup)")
            return 130
        if time.monotonic() > deadline:
            raise ServeError(
                f"vLLM did not answer {health} within {opts.startup_timeout:.0f}s; raise --startup-timeout", 1
            )
        stop.wait(1.0)
    echo(f"vLLM is serving {opts.model} at {url}")
    echo(f"point cwm-agent at it with: --model-url {url}")
    echo("press Ctrl-C to stop it")
    while not stop.wait(0.5):
        if proc.poll() is not None:
            tail = "\n".join(list(pump.tail)[-15:])
            raise ServeError(f"vLLM exited unexpectedly with code {proc.returncode}; its last output:\n{tail}", 1)
    echo("stopping vLLM")
    return 0
