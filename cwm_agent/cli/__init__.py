"""The `cwm-agent` command line. Each part of the project owns its commands in its own `cli.py`."""

from __future__ import annotations

from pathlib import Path

import typer

from cwm_agent import __version__
from cwm_agent.console import user_error
from cwm_agent.sandbox.base import SandboxError

app = typer.Typer(
    name="cwm-agent",
    help="Run Meta's Code World Model (CWM) as a software-engineering agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def setup(
    suite: str = typer.Option("bookworm", help="Debian suite for the base image (bookworm: Python 3.11, bullseye: 3.9)."),
    image: str = typer.Option("", help="Image name (default cwm-agent/base:SUITE)."),
    trust_host_ca: bool = typer.Option(False, "--trust-host-ca", help="Trust this host's CA bundle in image builds (TLS-inspecting proxies)."),
    ca_bundle: Path = typer.Option(Path("/etc/ssl/certs/ca-certificates.crt"), help="CA bundle used with --trust-host-ca."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build again even when the image exists."),
) -> None:
    """Build the project's base sandbox image (needs a Docker engine and debootstrap; no registry)."""
    from cwm_agent.sandbox.images import BuildOptions, ensure_base_image

    name = image or f"cwm-agent/base:{suite}"
    try:
        built = ensure_base_image(name, suite, BuildOptions(trust_host_ca=trust_host_ca, ca_bundle=ca_bundle), rebuild)
    except SandboxError as exc:
        raise user_error(str(exc)) from None
    typer.echo(f"{name}: {'built' if built else 'already present'}")


def _register() -> None:
    """Each part adds its own commands; see the `register` function of each `cli` module."""
    from cwm_agent.agent import cli as agent_cli
    from cwm_agent.benchmarks.swebench import cli as swebench_cli
    from cwm_agent.model import cli as model_cli
    from cwm_agent.sandbox import cli as sandbox_cli

    for part in (model_cli, agent_cli, sandbox_cli, swebench_cli):
        part.register(app)


_register()


if __name__ == "__main__":
    app()
