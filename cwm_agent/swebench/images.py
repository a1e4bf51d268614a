"""Instance environments: which image holds an instance, how a session starts in it, and hiding the fix.

Both official images (built by the SWE-bench harness) and the project's local instance images follow
one convention: the repository is a git checkout at the base commit in /testbed, and a conda env
named `testbed` is activated when the image has /opt/miniconda3.
"""

from __future__ import annotations

import docker
import docker.errors

from cwm_agent.sandbox.base import ImageNotFoundError, SandboxError
from cwm_agent.swebench.dataset import SWEBenchInstance

OFFICIAL_NAMESPACE = "swebench"
ARCH = "x86_64"
REPO_DIR = "/testbed"

ACTIVATE_ENV = (
    "if [ -f /opt/miniconda3/bin/activate ]; then source /opt/miniconda3/bin/activate && conda activate testbed; fi"
)
"""Activates the instance's env where the image has one; a no-op in images without conda."""


def local_image_name(instance_id: str) -> str:
    """The name the official harness (and `cwm-agent swebench build-local`) gives a locally built image."""
    return f"sweb.eval.{ARCH}.{instance_id.lower()}:latest"


def official_image_name(instance_id: str, namespace: str = OFFICIAL_NAMESPACE) -> str:
    """The published image: Docker Hub names may not hold "__", so the harness writes "_1776_"."""
    return f"{namespace}/sweb.eval.{ARCH}.{instance_id.lower()}:latest".replace("__", "_1776_")


def candidate_images(instance: SWEBenchInstance, registry_prefix: str | None = None) -> list[str]:
    """Names to look for, in order: official, local build, the row's own image, then the mirrored official name."""
    names = [official_image_name(instance.instance_id), local_image_name(instance.instance_id)]
    if instance.image:
        names.append(instance.image)
    if registry_prefix:
        names.append(f"{registry_prefix.rstrip('/')}/{official_image_name(instance.instance_id)}")
    return list(dict.fromkeys(names))


def _has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code == 400:  # not a valid image reference (e.g. a dataset row's `image`): no such image
            return False
        raise SandboxError(f"cannot look up image {name}: {exc.explanation or exc}") from None
    except docker.errors.DockerException as exc:  # the engine did not answer (a timeout under load)
        raise SandboxError(f"cannot look up image {name}: {exc}") from None


def resolve_image(
    instance: SWEBenchInstance,
    client: docker.DockerClient,
    registry_prefix: str | None = None,
    allow_pull: bool = False,
) -> str:
    """The image to run `instance` in: local images first, then (only if allowed) a pull.

    Raises ImageNotFoundError naming every image tried and how to get one.
    """
    names = candidate_images(instance, registry_prefix)
    for name in names:
        if _has_image(client, name):
            return name
    pull_errors = []
    if allow_pull:
        # A mirror (registry prefix) first; the local-build name is never published anywhere.
        official = official_image_name(instance.instance_id)
        mirrored = [n for n in names if registry_prefix and n.endswith("/" + official)]
        pullable = mirrored + [official] + ([instance.image] if instance.image else [])
        for name in dict.fromkeys(pullable):
            try:
                client.images.pull(name)
                return name
            except docker.errors.APIError as exc:
                pull_errors.append(f"{name}: {exc.explanation or exc}")
    if instance.repo.startswith("cwm-local/"):
        how = "build it with `cwm-agent swebench build-local`"
    else:
        how = (
            f"pull it (`docker pull {official_image_name(instance.instance_id)}`, or rerun with --allow-pull "
            "[--registry-prefix MIRROR]) or build it with the official harness "
            f"(`python -m swebench.harness.prepare_images --instance_ids {instance.instance_id}`)"
        )
    tried = ", ".join(names)
    detail = f" (pull failed: {'; '.join(pull_errors)})" if pull_errors else ""
    raise ImageNotFoundError(f"No image for {instance.instance_id}: tried {tried}{detail}. To get one, {how}.")


def startup_commands() -> list[str]:
    """Session startup for an instance image: activate its env when it has one, and start in /testbed.

    The check runs inside the container, so it holds for official images (conda) and local ones (none).
    """
    return [ACTIVATE_ENV, f"cd {REPO_DIR}"]
