"""The local (unsafe) backend: where files land and what is left after close."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cwm_agent.sandbox import SandboxConfig, SandboxError, make_sandbox


def test_workdir_paths_map_into_the_temporary_directory(tmp_path):
    with make_sandbox(SandboxConfig(backend="local")) as sb:
        root = Path(sb.workdir)
        (root / "pkg").mkdir()
        sb.write_file("/testbed/pkg/a.py", b"x = 1\n")
        assert (root / "pkg" / "a.py").read_bytes() == b"x = 1\n"
        assert sb.run("cat pkg/a.py; echo $CWM_WORKDIR").output == f"x = 1\n{root}\n"
        assert sb.read_file("pkg/a.py") == sb.read_file("/testbed/pkg/a.py") == b"x = 1\n"
        host_file = tmp_path / "host.txt"
        host_file.write_text("host")
        assert sb.read_file(str(host_file)) == b"host"  # other absolute paths are host paths
        sb.copy_out("/testbed/pkg", tmp_path / "out")
        assert (tmp_path / "out" / "pkg" / "a.py").exists()
        background = int(sb.run("sleep 100 & echo $!").output)
    assert not root.exists()
    deadline = time.monotonic() + 3
    while alive(background) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(background)  # background jobs go with the sandbox


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_failing_startup_command_is_an_error():
    sb = make_sandbox(SandboxConfig(backend="local", startup_commands=["exit 4"]))
    with pytest.raises(SandboxError, match="exit 4"):
        sb.start()
    with pytest.raises(SandboxError, match="closed"):
        sb.run("true")


def test_sigterm_while_the_main_thread_registers_a_sandbox_still_cleans_up():
    # The handler runs in the main thread, possibly in the middle of registering a sandbox
    # (here: inside track()): it must close the sandboxes and exit, not deadlock.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, signal, sys
        from cwm_agent.sandbox import SandboxConfig, make_sandbox
        from cwm_agent.sandbox import cleanup
        sb = make_sandbox(SandboxConfig(backend="local"))
        sb.start()
        print(sb.workdir, flush=True)
        real_track = cleanup.track
        def track(sandbox):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered here, between registry operations
            real_track(sandbox)
        cleanup.track = track
        make_sandbox(SandboxConfig(backend="local")).start()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 143, proc.stderr
    assert not Path(proc.stdout.strip()).exists()


@pytest.mark.timeout(60)
def test_a_startup_command_that_wedges_the_shell_is_an_error_not_an_endless_restart(tmp_path):
    """The shell itself spins (a builtin loop ignoring SIGINT): interrupting cannot help, and a
    restart would run the same startup command again. The session must give up with an error."""
    from cwm_agent.sandbox.local import _LocalHost
    from cwm_agent.sandbox.session import BashSession

    session = BashSession(_LocalHost(), str(tmp_path), env={}, startup_commands=["trap '' INT; while :; do :; done"],
                          startup_timeout=2)  # fmt: skip
    started = time.monotonic()
    try:
        with pytest.raises(SandboxError, match="did not recover"):
            session.start()
    finally:
        session.close()
    assert time.monotonic() - started < 30
    assert session._stream is None  # no half-started shell left for a later run()
