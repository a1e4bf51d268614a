"""`cwm-agent serve`: CWM behind vLLM's OpenAI-compatible API."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import NoReturn, Optional

import typer

from cwm_agent.cli.console import user_error


def serve(
    model: str = typer.Argument("facebook/cwm", help="Hugging Face model id or local path."),
    tensor_parallel: Optional[int] = typer.Option(
        None,
        "--tensor-parallel",
        min=1,
        help="GPUs to shard over (default: every visible GPU; giving it skips GPU detection).",
    ),
    max_model_len: int = typer.Option(131072, "--max-model-len", help="Context window in tokens."),
    port: int = typer.Option(8000, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="Share of GPU memory vLLM may use (vLLM's default when unset)."
    ),
    quantization: Optional[str] = typer.Option(None, help="e.g. fp8, to fit CWM on one 80 GB GPU."),
    extra: list[str] = typer.Option(
        [], "--extra", help="More `vllm serve` arguments, as one quoted string; repeatable."
    ),
    startup_timeout: float = typer.Option(
        1800.0, "--startup-timeout", help="Seconds to wait for the server to be healthy."
    ),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Also write vLLM's output to this file."),
    quiet: bool = typer.Option(False, "--quiet", help="Hide vLLM's output (it is still shown if startup fails)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the vllm command and exit."),
) -> None:
    """Serve CWM with vLLM (prefix caching on) and print the endpoint to pass as --model-url."""
    # Imported here for start-up time: its pydantic models cost every other command ~70 ms.
    from cwm_agent.model.serve import ServeError, ServeOptions, build_command, resolve_tensor_parallel
    from cwm_agent.model.serve import serve as run_server

    try:
        extra_args = [arg for chunk in extra for arg in shlex.split(chunk)]
    except ValueError as exc:
        _fail(f"--extra: {exc}")
    opts = ServeOptions(
        model=model, tensor_parallel=tensor_parallel, max_model_len=max_model_len, port=port, host=host,
        gpu_memory_utilization=gpu_memory_utilization, quantization=quantization, extra=extra_args,
        startup_timeout=startup_timeout, log_file=log_file,
    )  # fmt: skip
    if dry_run:
        try:
            tp = resolve_tensor_parallel(opts)
        except ServeError:
            tp = 1  # a dry run shows the command even on a machine without GPUs
        typer.echo(shlex.join(build_command(opts, tp)))
        return
    try:
        code = run_server(opts, quiet=quiet, echo=lambda line: typer.echo(line))
    except ServeError as exc:
        _fail(str(exc), exc.exit_code)
    raise typer.Exit(code)


def _fail(message: str, code: int = 2) -> NoReturn:
    raise user_error(message, code)
