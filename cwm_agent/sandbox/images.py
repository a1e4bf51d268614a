"""Docker images without a registry: a Debian root made by debootstrap, and builds on top of it.

Every image build here runs with the host's network (`--network host`: no bridge is ever
created) and can trust the host's CA bundle, for machines whose TLS goes through an
inspecting proxy.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors
from pydantic import BaseModel

from cwm_agent.sandbox.base import SandboxError

BASE_IMAGE = "cwm-agent/base:bookworm"
"""The project's default sandbox image: Debian with bash, git, python3 (+ venv, pytest), patch."""
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_PATH_IN_IMAGE = "/usr/local/share/cwm-agent/host-ca.crt"

_BASE_DOCKERFILE = """\
FROM {root}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \\
 && apt-get install -y --no-install-recommends \\
    bash coreutils procps git python3 python3-venv python3-pytest patch ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
RUN git config --system user.email agent@cwm-agent.invalid \\
 && git config --system user.name cwm-agent \\
 && git config --system init.defaultBranch main \\
 && git config --system --add safe.directory '*'
WORKDIR /testbed
"""


class BuildOptions(BaseModel):
    """Options shared by every image build."""

    trust_host_ca: bool = False
    """Copy the host's CA bundle into the image and point pip/requests/OpenSSL at it."""
    ca_bundle: Path = HOST_CA_BUNDLE
    """The CA bundle to trust when `trust_host_ca` is on."""
    pull: bool = False
    """Let the build pull its FROM image from a registry."""


def docker_client() -> docker.DockerClient:
    """A client for the local engine, or a SandboxError saying how to start one."""
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise SandboxError(
            f"No Docker engine answers ({exc}). Start one (`bash scripts/setup.sh` installs and starts it), "
            "or use the local backend (`--sandbox local`, no isolation)."
        ) from exc


def image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _with_host_ca(dockerfile: str) -> str:
    """Insert the CA bundle after every FROM line, so each build stage trusts it."""
    lines = []
    for line in dockerfile.splitlines():
        lines.append(line)
        if line.strip().upper().startswith("FROM "):
            lines.append(f"COPY host-ca.crt {CA_PATH_IN_IMAGE}")
            lines.append(
                f"ENV PIP_CERT={CA_PATH_IN_IMAGE} SSL_CERT_FILE={CA_PATH_IN_IMAGE} "
                f"REQUESTS_CA_BUNDLE={CA_PATH_IN_IMAGE} GIT_SSL_CAINFO={CA_PATH_IN_IMAGE}"
            )
    return "\n".join(lines) + "\n"


def build_image(
    tag: str,
    dockerfile: str,
    context: dict[str, bytes | Path] | None = None,
    options: BuildOptions | None = None,
) -> None:
    """Build `dockerfile` (text) as `tag`; `context` maps file names in the build context to bytes or host paths."""
    options = options or BuildOptions()
    client = docker_client()
    with tempfile.TemporaryDirectory(prefix="cwm-build-") as tmp:
        root = Path(tmp)
        for name, content in (context or {}).items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                if content.is_dir():
                    shutil.copytree(content, target, symlinks=True)
                else:
                    shutil.copy2(content, target)
            else:
                target.write_bytes(content)
        if options.trust_host_ca:
            if not options.ca_bundle.is_file():
                raise SandboxError(f"--trust-host-ca: no CA bundle at {options.ca_bundle}; pass --ca-bundle PATH.")
            shutil.copy2(options.ca_bundle, root / "host-ca.crt")
            dockerfile = _with_host_ca(dockerfile)
        (root / "Dockerfile").write_text(dockerfile)
        try:
            client.images.build(path=str(root), tag=tag, network_mode="host", rm=True, forcerm=True, pull=options.pull)
        except docker.errors.BuildError as exc:
            log = "".join(chunk.get("stream", "") + chunk.get("error", "") for chunk in exc.build_log)
            raise SandboxError(f"Building image {tag} failed: {exc.msg}\n{log[-4000:]}") from exc


def import_debian_root(name: str, suite: str = "bookworm", mirror: str | None = None) -> None:
    """Make a minimal Debian root with debootstrap and import it as image `name` (needs root)."""
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed: `apt-get install -y debootstrap` (needs root).")
    client = docker_client()
    with tempfile.TemporaryDirectory(prefix="cwm-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", suite, str(rootfs)]
        if mirror:
            cmd.append(mirror)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SandboxError(
                f"debootstrap {suite} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(rootfs, arcname=".")
        repository, _, tag = name.partition(":")
        client.api.import_image_from_file(str(tar_path), repository=repository, tag=tag or "latest")
        # debootstrap leaves root-owned files; TemporaryDirectory cleans them up as root.


def ensure_base_image(
    name: str = BASE_IMAGE, suite: str = "bookworm", options: BuildOptions | None = None, rebuild: bool = False
) -> bool:
    """Build the project's base image when it is missing. Returns True when it was built now."""
    client = docker_client()
    if image_exists(client, name) and not rebuild:
        return False
    root = f"cwm-agent/debian:{suite}"
    if not image_exists(client, root) or rebuild:
        import_debian_root(root, suite)
    build_image(name, _BASE_DOCKERFILE.format(root=root), options=options)
    return True
