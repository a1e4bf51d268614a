"""Shared fixtures: a real Docker engine and the project's base image are required for `docker` tests."""

from __future__ import annotations

import pytest
from gold_policy import GoldPolicy

from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.model.tokenizer import TokenizerNotFoundError, find_bpe_file, load_tokenizer
from cwm_agent.sandbox.images import BASE_IMAGE

NEEDS_TOKENIZER = (
    "needs Llama 3's tokenizer.model (tiktoken BPE file) and `tiktoken`: "
    "`python -m cwm_agent.model.tokenizer fetch` or `bash scripts/setup.sh --test`"
)


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


@pytest.fixture(scope="module")
def gold(local_images):
    """One scripted server for a module's tests, replaying each local instance's gold patch."""
    policy = GoldPolicy(local_images)
    with ScriptedServer(policy=policy) as server:
        yield server, policy


@pytest.fixture
def model(gold):
    """The module's gold server, reset between tests (no latency, no failing instance)."""
    server, policy = gold
    server.latency, policy.fail = 0.0, set()
    yield server, policy
    server.latency, policy.fail = 0.0, set()


@pytest.fixture(scope="module")
def bpe_file():
    """Llama 3's tiktoken BPE file, on which CWM's tokenizer is built (skips naming it when absent)."""
    try:
        return find_bpe_file()
    except TokenizerNotFoundError:
        pytest.skip(NEEDS_TOKENIZER)


@pytest.fixture(scope="module")
def tok(bpe_file):
    """CWM's tokenizer (skips when `tiktoken` is missing)."""
    try:
        return load_tokenizer(bpe_file)
    except TokenizerNotFoundError:
        pytest.skip(NEEDS_TOKENIZER)


DOCKER_FIXTURES = {"docker_client", "base_image", "local_images"}


def pytest_collection_modifyitems(config, items):
    """A test that takes a Docker fixture is in the `docker` tier even if its author forgot the mark,
    so `-m "not docker"` never runs (and fails on) a test that needs an engine."""
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for `-n auto` (pyproject's addopts): the tier that needs no Docker mostly waits on
    subprocesses and clocks, so it runs on two workers (a file's tests stay together); a run that takes
    Docker tests runs in one process, as they share an engine, images and the machine's CPUs."""
    selection = " ".join((config.getoption("markexpr") or "").split())
    return 2 if "not docker" in selection else 0
