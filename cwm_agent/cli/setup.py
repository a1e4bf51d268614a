"""`cwm-agent setup`: the base sandbox image, built without any registry."""

from __future__ import annotations

from pathlib import Path

import typer


def setup(
    suite: str = typer.Option(
        "bookworm", help="Debian suite for the base image (bookworm: Python 3.11, bullseye: 3.9)."
    ),
    image: str = typer.Option("", help="Image name (default cwm-agent/base:SUITE)."),
    trust_host_ca: bool = typer.Option(
        False, "--trust-host-ca", help="Trust this host's CA bundle in image builds (TLS-inspecting proxies)."
    ),
    ca_bundle: Path = typer.Option(
        Path("/etc/ssl/certs/ca-certificates.crt"), help="CA bundle used with --trust-host-ca."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build again even when the image exists."),
) -> None:
    """Build the project's base sandbox image (needs a Docker engine and debootstrap; no registry)."""
    from cwm_agent.sandbox.images import BuildOptions, ensure_base_image  # inside: CLI start-up time (docker)

    name = image or f"cwm-agent/base:{suite}"
    built = ensure_base_image(name, suite, BuildOptions(trust_host_ca=trust_host_ca, ca_bundle=ca_bundle), rebuild)
    typer.echo(f"{name}: {'built' if built else 'already present'}")
