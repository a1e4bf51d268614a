"""Build the local instance images: sdist from PyPI (on the host) -> git repo at /testbed -> image.

Images follow the official conventions (`sweb.eval.x86_64.<id>:latest`, repository at /testbed at the
base commit), so the agent and the evaluator treat them exactly like official ones. The base commit is
made with fixed author, committer and dates, so its sha is the same on every machine; the build fails
when it differs from the one in `instances.jsonl`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cwm_agent.sandbox.base import SandboxError
from cwm_agent.sandbox.images import BASE_IMAGE, BuildOptions, build_image, docker_client, image_exists
from cwm_agent.swebench.dataset import SWEBenchInstance, load_instances
from cwm_agent.swebench.images import local_image_name
from cwm_agent.swebench.local import INSTANCES_FILE, SOURCES, LocalSource, base_diff_path

COMMIT_ENV = (
    "GIT_AUTHOR_NAME=cwm-agent GIT_AUTHOR_EMAIL=local@cwm-agent.invalid GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' "
    "GIT_COMMITTER_NAME=cwm-agent GIT_COMMITTER_EMAIL=local@cwm-agent.invalid GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'"
)

_DOCKERFILE = """\
FROM {base}
# The base image normally has pytest already; older ones get it from Debian.
RUN command -v pytest >/dev/null \\
 || (apt-get update && apt-get install -y --no-install-recommends python3-pytest && rm -rf /var/lib/apt/lists/*)
COPY src /testbed
COPY base.diff /tmp/base.diff
WORKDIR /testbed
RUN git init -q -b main \\
 && git apply /tmp/base.diff && rm /tmp/base.diff \\
 && git add -A \\
 && env {commit_env} git commit -q -m "{message}" \\
 && sha=$(git rev-parse HEAD) \\
 && if [ -n "{expect}" ] && [ "$sha" != "{expect}" ]; then echo "base commit is $sha, expected {expect}" >&2; exit 1; fi
LABEL io.cwm-agent.swebench-instance="{instance_id}" io.cwm-agent.base-commit="{expect}"
"""


def sdist_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "cwm-agent" / "sdists"


def fetch_sdist(source: LocalSource, cache: Path | None = None) -> Path:
    """The sdist on the host (pip download on first use), checked against its pinned sha256."""
    cache = cache or sdist_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    matches = [p for p in cache.glob(f"{source.top_dir}.tar.gz")]
    if not matches:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(cache),
                f"{source.package}=={source.version}",
            ],
            capture_output=True,
            text=True,
        )
        matches = [p for p in cache.glob(f"{source.top_dir}.tar.gz")]
        if proc.returncode != 0 or not matches:
            raise SandboxError(
                f"Could not download {source.package}=={source.version} from PyPI (pip exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
    path = matches[0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != source.sha256:
        path.unlink()
        raise SandboxError(
            f"{path.name}: sha256 {digest} does not match the pinned {source.sha256}; removed it, try again."
        )
    return path


def _unpack(sdist: Path, top_dir: str, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    (dest / top_dir).rename(dest / "src")


def build_instance_image(
    instance: SWEBenchInstance,
    options: BuildOptions | None = None,
    base_image: str = BASE_IMAGE,
    check_commit: bool = True,
) -> str:
    """Build (always) the image of one local instance; returns its name."""
    source = SOURCES.get(instance.repo)
    if source is None:
        raise SandboxError(f"{instance.instance_id}: {instance.repo} is not a local repository.")
    sdist = fetch_sdist(source)
    name = local_image_name(instance.instance_id)
    with tempfile.TemporaryDirectory(prefix="cwm-local-") as tmp:
        _unpack(sdist, source.top_dir, Path(tmp))
        dockerfile = _DOCKERFILE.format(
            base=base_image,
            commit_env=COMMIT_ENV,
            instance_id=instance.instance_id,
            message=f"{source.package} {source.version} (base of {instance.instance_id})",
            expect=instance.base_commit if check_commit else "",
        )
        build_image(
            name, dockerfile, {"src": Path(tmp) / "src", "base.diff": base_diff_path(instance.instance_id)}, options
        )
    return name


def _current(client, name: str, base_commit: str) -> bool:
    """The image exists and was built for this base commit (an older instances.jsonl means rebuild)."""
    import docker.errors

    try:
        labels = client.images.get(name).labels or {}
    except docker.errors.ImageNotFound:
        return False
    return labels.get("io.cwm-agent.base-commit") == base_commit


def local_instances() -> list[SWEBenchInstance]:
    return load_instances(INSTANCES_FILE)


def build_local_images(
    options: BuildOptions | None = None, force: bool = False, instance_ids: list[str] | None = None
) -> list[tuple[str, bool]]:
    """Build the images that are missing (all with `force`). Returns (image, built now) per instance."""
    client = docker_client()
    if not image_exists(client, BASE_IMAGE):
        raise SandboxError(f"{BASE_IMAGE} is missing: run `cwm-agent setup` first.")
    done = []
    for instance in load_instances(INSTANCES_FILE, instance_ids=instance_ids):
        name = local_image_name(instance.instance_id)
        if not force and _current(client, name, instance.base_commit):
            done.append((name, False))
            continue
        build_instance_image(instance, options)
        done.append((name, True))
    return done
