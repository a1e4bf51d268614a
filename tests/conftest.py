"""Shared fixtures: a real Docker engine and the project's base image are required for `docker` tests."""

from __future__ import annotations

import pytest

from cwm_agent.sandbox.images import BASE_IMAGE


@pytest.fixture(scope="session")
def docker_client():
    """A client for the real engine; fails (not skips) when none answers, since CI sets one up."""
    from cwm_agent.sandbox.images import docker_client as make_client
    from cwm_agent.sandbox.images import image_exists

    client = make_client()
    if not image_exists(client, BASE_IMAGE):
        pytest.fail(f"{BASE_IMAGE} is missing: run `cwm-agent setup` (or `bash scripts/setup.sh --test`).")
    return client


@pytest.fixture
def base_image(docker_client) -> str:
    return BASE_IMAGE


@pytest.fixture(scope="session")
def local_images(docker_client):
    """The local SWE-bench instances, with their images built if missing (`bash scripts/setup.sh --test`
    builds them up front; here it takes well under a second when they exist)."""
    from cwm_agent.swebench.local.build import build_local_images, local_instances

    build_local_images()
    return local_instances()
