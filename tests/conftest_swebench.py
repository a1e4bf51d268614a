"""Fixture for tests that need the local SWE-bench instance images (imported by those test modules).

Building all three takes about 5-20 s the first time (sdists from PyPI on the host, cached under
~/.cache/cwm-agent/sdists; then three small layers on the base image) and well under a second when
the images are present: CI can run `cwm-agent swebench build-local` in its setup step instead.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_images(docker_client):
    """The local instances, with their images built if missing."""
    from cwm_agent.benchmarks.swebench.local.build import build_local_images, local_instances

    build_local_images()
    return local_instances()
