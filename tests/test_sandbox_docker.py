"""The Docker backend: isolation, files, limits, and no container left behind."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import uuid

import docker.errors
import pytest

from cwm_agent.sandbox import ImageNotFoundError, RunStatus, SandboxConfig, SandboxError, make_sandbox
from cwm_agent.sandbox.base import OWNER_PID_LABEL, PROJECT_LABEL, RUN_ID_LABEL
from cwm_agent.sandbox.cleanup import prune
from cwm_agent.sandbox.docker import DockerSandbox

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sandbox(docker_client):
    with DockerSandbox(SandboxConfig(), client=docker_client) as sb:
        yield sb


def containers_of(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{RUN_ID_LABEL}={run_id}"})


def test_container_is_isolated_and_limited(sandbox):
    attrs = sandbox.container.attrs
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["Privileged"] is False
    assert host["PidsLimit"] == 1024 and host["Memory"] == 4 * 1024**3 and host["NanoCpus"] == 2 * 10**9
    labels = attrs["Config"]["Labels"]
    assert labels[PROJECT_LABEL] == "cwm-agent" and labels[RUN_ID_LABEL] == sandbox.run_id
    assert labels[OWNER_PID_LABEL] == str(os.getpid())


def test_network_none_has_no_network(sandbox):
    assert sandbox.run("ls /sys/class/net").output.split() == ["lo"]
    r = sandbox.run("exec 3<>/dev/tcp/1.1.1.1/80 && echo connected", timeout=10)
    assert "connected" not in r.output and r.exit_code != 0 and r.elapsed < 2


def test_network_host_is_an_explicit_opt_in_that_shares_the_hosts_interfaces(docker_client):
    """Only looks at the interfaces: no traffic is sent anywhere."""
    run_id = uuid.uuid4().hex[:12]
    with make_sandbox(SandboxConfig(run_id=run_id, network="host"), client=docker_client) as sb:
        inside = sorted(sb.run("ls /sys/class/net").output.split())
    assert inside == sorted(os.listdir("/sys/class/net"))  # the host's, not the lone lo of network none
    assert containers_of(docker_client, run_id) == []


def test_write_then_read_files(sandbox):
    sandbox.write_file("/testbed/hello.py", b"print('hi')\n\xff", mode=0o755)
    assert sandbox.read_file("/testbed/hello.py") == b"print('hi')\n\xff"
    assert sandbox.run("stat -c '%a %u' hello.py").output == "755 0\n"
    sandbox.run("chown 1234:1234 hello.py && ln -sf hello.py link.py")
    sandbox.write_file("/testbed/hello.py", b"new")
    assert sandbox.run("stat -c '%u:%g' hello.py; cat hello.py").output == "1234:1234\nnew"
    assert sandbox.read_file("link.py") == b"new"  # relative to the work dir, symlink followed


def test_file_errors(sandbox):
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("/testbed/missing.txt")
    with pytest.raises(IsADirectoryError):
        sandbox.read_file("/tmp")
    with pytest.raises(IsADirectoryError):
        sandbox.write_file("/tmp", b"x")
    with pytest.raises(FileNotFoundError):
        sandbox.write_file("/no/such/dir/file.txt", b"x")


def test_copy_in_and_out(sandbox, tmp_path):
    src = tmp_path / "repo"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "README").write_text("readme\n")
    sandbox.copy_in(src, "/work/repo")
    assert (
        sandbox.run("cd /work/repo && find . -type f | sort && stat -c %u pkg/mod.py").output
        == "./README\n./pkg/mod.py\n0\n"
    )
    sandbox.copy_in(src / "README", "/work/single")
    assert sandbox.read_file("/work/single/README") == b"readme\n"
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("from_tar/data.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"data"))
    sandbox.copy_in(archive, "/work")
    assert sandbox.read_file("/work/from_tar/data.txt") == b"data"
    out = tmp_path / "out"
    sandbox.copy_out("/work/repo", out)
    assert (out / "repo" / "pkg" / "mod.py").read_text() == "x = 1\n"
    with pytest.raises(FileNotFoundError):
        sandbox.copy_out("/work/nothing", out)
    # Links inside the tree are kept; a link out of it (a venv's python) is skipped, not fatal.
    sandbox.run("cd /work/repo && ln -s pkg/mod.py inner && ln -s /usr/bin/python3 python")
    sandbox.copy_out("/work/repo", tmp_path / "out2")
    assert (tmp_path / "out2" / "repo" / "inner").read_text() == "x = 1\n"
    assert not (tmp_path / "out2" / "repo" / "python").exists()


def test_missing_image_is_a_clear_error(docker_client):
    run_id = uuid.uuid4().hex[:12]
    config = SandboxConfig(image="cwm-agent/no-such-image:never", run_id=run_id)
    with pytest.raises(ImageNotFoundError, match="cwm-agent/no-such-image:never"):
        with make_sandbox(config, client=docker_client):
            pass
    assert containers_of(docker_client, run_id) == []


def test_pull_with_no_registry_answering_is_a_clear_error(docker_client):
    """allow_pull against a registry that does not answer (a closed port on this machine)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_id = uuid.uuid4().hex[:12]
    image = f"127.0.0.1:{port}/cwm-agent/absent:1"
    config = SandboxConfig(image=image, run_id=run_id, allow_pull=True)
    with pytest.raises(ImageNotFoundError, match="pulling it failed") as info:
        with make_sandbox(config, client=docker_client):
            pass
    assert image in str(info.value)
    assert containers_of(docker_client, run_id) == []


def test_failing_startup_command_leaves_no_container(docker_client):
    run_id = uuid.uuid4().hex[:12]
    with pytest.raises(SandboxError, match="exit 4"):
        DockerSandbox(SandboxConfig(run_id=run_id, startup_commands=["exit 4"]), client=docker_client).start()
    assert containers_of(docker_client, run_id) == []


def test_fork_bomb_is_contained_and_sandbox_recovers(docker_client):
    run_id = uuid.uuid4().hex[:12]
    with DockerSandbox(SandboxConfig(pids_limit=64, run_id=run_id), client=docker_client) as sb:
        sb.run("cd /tmp && export MARK=here")
        r = sb.run(":(){ :|: & };:; sleep 30", timeout=3)
        assert r.status == RunStatus.TIMEOUT
        after = sb.run("echo ok; ls /proc | grep -c '^[0-9]'", timeout=20)
        assert after.status == RunStatus.OK and after.output.startswith("ok\n")
        assert int(after.output.split()[-1]) < 10  # the bomb is gone
    assert containers_of(docker_client, run_id) == []


def test_close_removes_container_also_after_an_exception(docker_client):
    run_id = uuid.uuid4().hex[:12]
    sb = DockerSandbox(SandboxConfig(run_id=run_id), client=docker_client)
    with pytest.raises(RuntimeError, match="boom"):
        with sb:
            assert len(containers_of(docker_client, run_id)) == 1
            raise RuntimeError("boom")
    assert containers_of(docker_client, run_id) == []
    sb.close()  # idempotent


HOLDER = textwrap.dedent(
    """
    import sys, time
    from cwm_agent.sandbox import SandboxConfig, make_sandbox
    with make_sandbox(SandboxConfig(run_id=sys.argv[1])) as sb:
        sb.run("sleep 60 &")
        print("ready", flush=True)
        time.sleep(60)
    """
)


# As the agent does it: made in the event loop's thread, started and used in worker threads.
HOLDER_ASYNC = textwrap.dedent(
    """
    import asyncio, sys
    from cwm_agent.sandbox import SandboxConfig, make_sandbox
    async def main():
        sb = make_sandbox(SandboxConfig(run_id=sys.argv[1]))
        await asyncio.to_thread(sb.start)
        print("ready", flush=True)
        await asyncio.to_thread(sb.run, "sleep 60")
    asyncio.run(main())
    """
)


# Many rollouts at once: a signal must remove all their containers, side by side.
HOLDER_MANY = textwrap.dedent(
    """
    import asyncio, sys
    from cwm_agent.sandbox import SandboxConfig, make_sandbox
    async def main():
        boxes = [make_sandbox(SandboxConfig(run_id=sys.argv[1])) for _ in range(8)]
        await asyncio.gather(*(asyncio.to_thread(sb.start) for sb in boxes))
        print("ready", flush=True)
        await asyncio.gather(*(asyncio.to_thread(sb.run, "sleep 60") for sb in boxes))
    asyncio.run(main())
    """
)


def start_holder(run_id: str, script: str = HOLDER) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, run_id], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(
    "sig, code, script",
    [
        (signal.SIGTERM, 143, HOLDER),
        (signal.SIGINT, -signal.SIGINT, HOLDER),
        (signal.SIGTERM, 143, HOLDER_ASYNC),
        (signal.SIGTERM, 143, HOLDER_MANY),
    ],
    ids=["sigterm", "sigint", "sigterm-asyncio-threads", "sigterm-eight-sandboxes"],
)
def test_signals_remove_the_container(docker_client, sig, code, script):
    run_id = uuid.uuid4().hex[:12]
    proc = start_holder(run_id, script)
    expected = 8 if script is HOLDER_MANY else 1
    assert len(containers_of(docker_client, run_id)) == expected
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert containers_of(docker_client, run_id) == []


def test_prune_after_sigkill(docker_client):
    run_id = uuid.uuid4().hex[:12]
    proc = start_holder(run_id)
    # A live owner keeps its containers under --dead-only.
    assert prune(run_id, dead_only=True, client=docker_client) == []
    proc.kill()
    proc.wait(timeout=10)
    (left,) = containers_of(docker_client, run_id)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cwm_agent.cli import app; app()",
            "sandbox",
            "prune",
            "--run-id",
            run_id,
            "--dead-only",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and f"removed {left.name}" in out.stdout, out.stderr
    assert containers_of(docker_client, run_id) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(left.id)


def test_two_prunes_at_once_remove_everything_without_error(docker_client, base_image):
    # A prune racing another one (or a run closing its sandboxes) sees containers vanish while it works.
    import threading

    run_id = uuid.uuid4().hex[:12]
    labels = {PROJECT_LABEL: "cwm-agent", RUN_ID_LABEL: run_id}
    for _ in range(16):
        docker_client.containers.create(base_image, ["true"], labels=labels, network_mode="none")
    errors: list[BaseException] = []
    removed: list[str] = []

    def worker() -> None:
        try:
            removed.extend(prune(run_id, client=docker_client))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert len(set(removed)) == 16
    finally:
        prune(run_id, client=docker_client)
    assert containers_of(docker_client, run_id) == []
