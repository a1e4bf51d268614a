"""`scripts/setup.sh` on Debian 12's externally managed Python, and the README's first commands.

The Python part of the set-up runs in a fresh Debian 12 image built from the base image (an image
build step, offline: the package's dependencies come as wheels built on this host). Docker's layer
cache makes a rerun with unchanged inputs take seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cwm_agent.sandbox.images import BASE_IMAGE

ROOT = Path(__file__).resolve().parent.parent
README_SETUP = "bash scripts/setup.sh && .venv/bin/cwm-agent demo"
README_TESTS = "bash scripts/setup.sh --test && .venv/bin/python -m pytest -q"


def test_the_readme_first_commands_use_the_virtual_environment_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert README_SETUP in readme and README_TESTS in readme
    ci = (ROOT / ".ci" / "run").read_text()
    setup, tests = README_TESTS.split(" && ")
    # CI runs the README's test command, with the linters between its two halves.
    assert re.search(
        re.escape(setup) + r" && \.venv/bin/ruff check cwm_agent tests && \.venv/bin/ruff format --check "
        r"cwm_agent tests && " + re.escape(tests),
        ci,
    ), ci


def _wheelhouse() -> Path:
    """The package's dependencies as wheels, built here (where the package index is reachable) once per
    dependency list, so the image is built offline and its layers are cached between runs."""
    import hashlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = sorted(deps) + ["setuptools>=68", "wheel"]
    key = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "cwm-agent" / f"setup-test-wheels-{key}"
    if not (cache / "done").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(cache), *wanted],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        (cache / "done").write_text("")
    return cache


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_setup_installs_into_a_venv_on_debian_12s_externally_managed_python(tmp_path, docker_client):
    context = tmp_path / "context"
    src = context / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("cwm_agent", "scripts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = context / "wheels"
    shutil.copytree(_wheelhouse(), wheels)
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "COPY wheels /wheels\n"
        "COPY src /src\n"
        "WORKDIR /src\n"
        # Debian's own Python refuses pip installs (PEP 668): the reason setup.sh makes a venv.
        "RUN ls /usr/lib/python3*/EXTERNALLY-MANAGED\n"
        "RUN PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels CWM_AGENT_EXTRAS= bash scripts/setup.sh --python-only"
        " > /setup.log 2>&1 || (cat /setup.log; exit 1)\n"
        "RUN cat /setup.log && .venv/bin/cwm-agent config > /dev/null && .venv/bin/python -c 'import cwm_agent.cli'\n"
    )
    tag = "cwm-agent/test-setup:latest"
    build = subprocess.run(
        ["docker", "build", "--force-rm", "--network", "none", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    log = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", tag, "cat", "/setup.log"], capture_output=True, text=True
    ).stdout
    assert "creating the virtual environment .venv" in log and "source .venv/bin/activate" in log
