"""The bundled demo task: `tinyintervals`, a small project of our own with one real bug.

`task.yaml` holds the project's files, the issue, the hidden tests (SWE-bench style) and a
recorded reply script. The demo instance is an ordinary SWE-bench-format instance with an image
built on the base image, so `cwm-agent demo` runs the very pipeline a SWE-bench run does:
agent in a sandbox → patch → evaluation in a fresh container → report.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from cwm_agent.sandbox.base import SandboxError
from cwm_agent.sandbox.images import BASE_IMAGE, BuildOptions, build_image, docker_client, image_exists
from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.images import local_image_name
from cwm_agent.swebench.local.build import COMMIT_ENV

TASK_FILE = Path(__file__).resolve().parent / "task.yaml"

_DOCKERFILE = """\
FROM {base}
COPY src /testbed
WORKDIR /testbed
RUN git init -q -b main && git add -A && env {commit_env} git commit -q -m "tinyintervals 0.1"
"""


@lru_cache(maxsize=1)
def demo_spec() -> dict[str, Any]:
    return yaml.safe_load(TASK_FILE.read_text(encoding="utf-8"))


def demo_replies() -> list[str]:
    """The recorded replies; a real model stops right after `</tool>`, so the YAML's final newline goes."""
    return [reply.rstrip("\n") for reply in demo_spec()["replies"]]


def demo_image() -> str:
    return local_image_name(demo_spec()["instance_id"])


def build_demo_image(options: BuildOptions | None = None, force: bool = False) -> str:
    """Build the demo's image (the repository at /testbed, one commit) when missing; returns its base commit."""
    client = docker_client()
    name = demo_image()
    if not image_exists(client, BASE_IMAGE):
        raise SandboxError(f"{BASE_IMAGE} is missing: run `bash scripts/setup.sh` (or `cwm-agent setup`) first.")
    if force or not image_exists(client, name):
        with tempfile.TemporaryDirectory(prefix="cwm-demo-") as tmp:
            src = Path(tmp) / "src"
            for rel, text in demo_spec()["files"].items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_text(text, encoding="utf-8")
            build_image(name, _DOCKERFILE.format(base=BASE_IMAGE, commit_env=COMMIT_ENV), {"src": src}, options)
    output = client.containers.run(
        name, ["git", "-C", "/testbed", "rev-parse", "HEAD"], remove=True, network_mode="none"
    )
    return output.decode().strip()


def demo_instance(base_commit: str) -> SWEBenchInstance:
    spec = demo_spec()
    return SWEBenchInstance(
        instance_id=spec["instance_id"],
        repo=spec["repo"],
        version=spec["version"],
        base_commit=base_commit,
        problem_statement=spec["problem_statement"],
        patch="",
        test_patch=spec["test_patch"],
        FAIL_TO_PASS=spec["FAIL_TO_PASS"],
        PASS_TO_PASS=spec["PASS_TO_PASS"],
    )
