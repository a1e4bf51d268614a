"""Bounds and hardening of a sandbox: validated settings, no-new-privileges and a small capability set,
a disk limit, caps on every read, and a final diff the model cannot redirect."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cwm_agent.agent.config import ConfigError, load_config
from cwm_agent.agent.repo import working_tree_diff
from cwm_agent.sandbox import SandboxConfig, SandboxError
from cwm_agent.sandbox.base import DEFAULT_CAPS, DiskLimitError, FileTooLargeError
from cwm_agent.sandbox.docker import DockerSandbox


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"memory": "0"}, "at least 64m"),
        ({"memory": "lots"}, "not a size"),
        ({"memory": "32m"}, "at least 64m"),
        ({"cpus": 0}, "greater than 0"),
        ({"pids_limit": -1}, "greater than or equal to 16"),
        ({"pids_limit": 0}, "greater than or equal to 16"),
        ({"command_timeout": 0}, "greater than 0"),
        ({"disk": "1k"}, "at least 64m"),
        ({"memroy": "4g"}, "memroy"),
    ],
)
def test_bad_sandbox_settings_are_one_line_errors_naming_the_key(settings, words):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"sandbox": settings})
    message = str(info.value)
    assert "\n" not in message and words in message and f"sandbox.{next(iter(settings))}" in message


def test_good_sandbox_settings_pass_and_unlimited_pids_is_explicit():
    config = SandboxConfig(memory="512m", cpus=0.5, pids_limit=None, disk=None)
    assert config.pids_limit is None and config.disk_bytes is None
    with pytest.raises(ValidationError):
        SandboxConfig(memory="4 gigs")


def test_sampling_n_over_one_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"sampling\.n.*one reply"):
        load_config(overrides={"sampling": {"n": 4}})


@pytest.mark.docker
def test_container_has_no_new_privileges_and_only_the_needed_capabilities(docker_client):
    with DockerSandbox(SandboxConfig(), client=docker_client) as sb:
        host = sb.container.attrs["HostConfig"]
        assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["ALL"]
        assert sorted(host["CapAdd"]) == sorted(DEFAULT_CAPS)
        # What tasks do as root still works: own and chmod files, switch user, stop another user's process.
        r = sb.run(
            "useradd -m tester && touch /tmp/f && chown tester /tmp/f && chmod 600 /tmp/f "
            "&& su tester -s /bin/bash -c 'echo hi >> /tmp/f' && grep -c . /tmp/f && grep NoNewPrivs /proc/self/status"
        )
        assert r.exit_code == 0 and r.output.startswith("1\n") and "NoNewPrivs:\t1" in r.output, r.output
        r = sb.run(
            "su tester -s /bin/bash -c 'sleep 30 & echo $!' > /tmp/pid; sleep 0.2; kill $(cat /tmp/pid) && echo killed"
        )
        assert r.output.strip().endswith("killed"), r.output
        # A raw socket needs CAP_NET_RAW, which is gone.
        r = sb.run("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'")
        assert r.exit_code != 0 and "PermissionError" in r.output


@pytest.mark.docker
def test_a_write_over_the_disk_limit_stops_the_sandbox(docker_client):
    config = SandboxConfig(disk="100m", disk_check_seconds=0.5)
    with DockerSandbox(config, client=docker_client) as sb:
        sb.run("head -c 50000000 /dev/zero > /tmp/ok.bin")
        assert sb.run("echo alive").output == "alive\n"
        with pytest.raises(DiskLimitError, match=r"over its disk limit \(sandbox.disk: 100m\)"):
            sb.run("for i in $(seq 1 30); do head -c 20000000 /dev/zero > /tmp/big$i.bin; sleep 0.2; done", timeout=60)
        with pytest.raises(DiskLimitError):
            sb.run("echo again")


@pytest.mark.docker
def test_reads_from_the_sandbox_are_capped_without_loading_the_file(docker_client):
    config = SandboxConfig(max_read_bytes=1_000_000)
    with DockerSandbox(config, client=docker_client) as sb:
        sb.run("head -c 300000000 /dev/zero > /tmp/huge; seq 1 100000 > /tmp/log; echo small > /tmp/small")
        with pytest.raises(FileTooLargeError, match=r"300 MB, over the cap of 1 MB \(sandbox.max_read_bytes\)"):
            sb.read_file("/tmp/huge")
        assert sb.read_file("/tmp/small") == b"small\n"
        data, dropped = sb.read_head_tail("/tmp/log", 1000)
        assert data.startswith(b"1\n2\n") and data.endswith(b"99999\n100000\n") and len(data) == 1000
        assert dropped == len("".join(f"{i}\n" for i in range(1, 100001))) - 1000
        assert sb.read_head_tail("/tmp/small", 1000) == (b"small\n", 0)


@pytest.fixture
def repo_sandbox(docker_client):
    with DockerSandbox(SandboxConfig(max_diff_bytes=1_000_000), client=docker_client) as sb:
        r = sb.run(
            "cd /testbed && git init -q && echo one > a.txt && git add a.txt && git commit -qm base "
            "&& git rev-parse HEAD"
        )
        yield sb, r.output.strip().splitlines()[-1]


@pytest.mark.docker
def test_the_final_diff_cannot_be_redirected_by_the_model(repo_sandbox):
    sb, base = repo_sandbox
    sb.run("cd /testbed && echo two >> a.txt")
    # What used to send the harness's diff to /dev/null (its old fixed path), and other traps.
    sb.run("ln -sfn /dev/null /tmp/.cwm-agent-final.diff; mkdir -p /tmp/.cwm-diff.x")
    sb.run("ln -s /dev/zero /tmp/.cwm-diff.x/diff")
    diff = working_tree_diff(sb, "/testbed", base)
    assert "+two" in diff and diff.startswith("diff --git a/a.txt b/a.txt")
    assert sb.run("ls -d /tmp/.cwm-diff.* | wc -l").output.strip() == "1"  # its own directory is gone


@pytest.mark.docker
def test_an_over_cap_diff_is_an_error_naming_the_cap_and_any_failure_is_a_sandbox_error(repo_sandbox):
    sb, base = repo_sandbox
    sb.run("cd /testbed && head -c 3000000 /dev/urandom | base64 > data.txt")
    with pytest.raises(SandboxError, match=r"over the cap of 1 MB \(sandbox.max_diff_bytes\)"):
        working_tree_diff(sb, "/testbed", base)
    sb.run("rm /testbed/data.txt && rm -rf /testbed/.git")
    with pytest.raises(SandboxError, match="taking the diff"):
        working_tree_diff(sb, "/testbed", base)
    sb.close()
    with pytest.raises(SandboxError):
        working_tree_diff(sb, "/testbed", base)


def test_a_config_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"agent: {max_turns: 3}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 27\)"):
        load_config(path)


@pytest.mark.docker
def test_after_kill_9_minus_1_the_error_says_what_happened_not_a_startup_timeout(docker_client):
    import time

    with DockerSandbox(SandboxConfig(), client=docker_client) as sb:
        started = time.monotonic()
        with pytest.raises(SandboxError) as info:
            sb.run("kill -9 -1")
            sb.run("echo still here?")
        message = str(info.value)
        assert time.monotonic() - started < 10
        assert "did not start within" not in message and "is bash installed" not in message
        # The exec either fails (the container has stopped) or its stream ends at once; either is said.
        assert ("ended as it started" in message or "has stopped" in message) and "\n" not in message
