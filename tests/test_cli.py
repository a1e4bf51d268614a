"""The command line's shared surface: --version, -h, the one-line error boundary, -c overrides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cwm_agent import __version__
from cwm_agent.cli.common import UsageError, parse_set_options

CLI = [sys.executable, "-m", "cwm_agent.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_version_and_short_help():
    assert run("--version").stdout.strip() == __version__
    for args in (["-h"], ["swebench", "-h"], ["sandbox", "prune", "-h"]):
        proc = run(*args)
        assert proc.returncode == 0 and "Usage:" in proc.stdout, args


def test_no_command_shows_the_help_and_fails():
    proc = run()
    assert proc.returncode == 2 and "Commands" in proc.stdout


def test_a_user_error_is_one_line_with_its_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: [1, 2\n")
    proc = run("config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_set_options_nest_and_read_yaml_scalars():
    assert parse_set_options(
        ["agent.max_turns=10", "sampling.seed=3", "model.url=http://x:1/v1", "agent.reasoning=false"]
    ) == {
        "agent": {"max_turns": 10, "reasoning": False},
        "sampling": {"seed": 3},
        "model": {"url": "http://x:1/v1"},
    }


@pytest.mark.parametrize("bad", ["max_turns", "=3", "agent..x=1", "agent=1"])
def test_set_options_name_a_malformed_pair(bad):
    pairs = [bad] if bad != "agent=1" else ["agent.max_turns=1", "agent=1"]
    with pytest.raises(UsageError) as err:
        parse_set_options(pairs)
    assert "-c" in str(err.value)
