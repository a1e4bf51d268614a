"""The persistent bash session, on both backends: what a model sees from command to command."""

from __future__ import annotations

import time

import pytest

from cwm_agent.sandbox import RunStatus, SandboxConfig, make_sandbox

CONFIG = dict(env={"CWM_FROM_CONFIG": "yes"}, startup_commands=["export CWM_FROM_STARTUP=1", "alias ll='echo aliased'"])


@pytest.fixture(scope="module", params=[pytest.param("docker", marks=pytest.mark.docker), "local"])
def sandbox(request):
    if request.param == "docker":
        request.getfixturevalue("docker_client")
    with make_sandbox(SandboxConfig(backend=request.param, **CONFIG)) as sb:
        yield sb


def workdir(sb) -> str:
    return sb.workdir


def test_state_persists_between_commands(sandbox):
    assert sandbox.run("mkdir -p sub && cd sub && export FOO=bar && greet() { echo hello $1; }").exit_code == 0
    r = sandbox.run("pwd; echo $FOO; greet you")
    assert r.output == f"{workdir(sandbox)}/sub\nbar\nhello you\n"
    assert sandbox.run("alias hi='echo hi there'").exit_code == 0
    assert sandbox.run("hi").output == "hi there\n"
    sandbox.run("cd ..")


def test_exit_codes_and_interleaved_output(sandbox):
    r = sandbox.run("echo out; echo err >&2; echo out2; (exit 7)")
    assert (r.output, r.exit_code, r.status) == ("out\nerr\nout2\n", 7, RunStatus.OK)
    assert sandbox.run("false").exit_code == 1
    assert sandbox.run("printf 'no newline'").output == "no newline"


def test_environment_for_non_interactive_use(sandbox):
    r = sandbox.run("echo $PAGER $GIT_PAGER $TERM $CWM_FROM_CONFIG $CWM_FROM_STARTUP; ll")
    assert r.output == "cat cat dumb yes 1\naliased\n"


def test_plugin_python_is_named_as_cwms_start_script_does(sandbox):
    # /opt/miniconda3/bin/python3 where the image has it (SWE-bench images), else python3.
    assert sandbox.run("echo $PYPLUGIN_PYTHON_PATH").output == "python3\n"


def test_commands_reading_stdin_return_at_once(sandbox):
    r = sandbox.run(
        "cat; read x; echo read=$? x=$x; python3 -c 'import sys; print(len(sys.stdin.read()))' 2>/dev/null || true",
        timeout=10,
    )
    assert r.status == RunStatus.OK and r.elapsed < 2
    assert "read=1 x=" in r.output


def test_multiline_heredoc_and_sentinel_like_text(sandbox):
    command = (
        "cat > notes.txt <<'EOF'\nline one\n__CWM_END_0000__0 done\n__CWM_CMD_0000__\nEOF\n"
        "if true; then\n  echo __CWM_END_ fake\nfi\ncat notes.txt; rm notes.txt"
    )
    r = sandbox.run(command)
    assert r.exit_code == 0
    assert r.output == "__CWM_END_ fake\nline one\n__CWM_END_0000__0 done\n__CWM_CMD_0000__\n"


def test_binary_and_invalid_utf8_output(sandbox):
    # Bytes that are not UTF-8 are dropped, as CWM's session decodes.
    r = sandbox.run("printf 'a\\xff\\xfeb\\x00c\\n'; head -c 4096 /dev/urandom")
    assert r.status == RunStatus.OK
    assert r.output.startswith("ab\x00c\n") and "\ufffd" not in r.output
    assert sandbox.run("echo fine").output == "fine\n"


def test_output_up_to_cwms_limit_comes_back_whole(sandbox):
    # CWM's buffer holds 480 KiB, its 9-byte end-of-command line included.
    r = sandbox.run(f"head -c {480 * 1024 - 9} /dev/zero | tr '\\0' x")
    assert r.status == RunStatus.OK and r.exit_code == 0 and r.output == "x" * (480 * 1024 - 9)


def test_output_over_the_limit_ends_the_session(sandbox):
    sandbox.run("cd /; export GONE=1")
    r = sandbox.run(f"head -c {480 * 1024 - 8} /dev/zero | tr '\\0' x; echo never-printed")
    assert r.status == RunStatus.OUTPUT_TOO_LONG and r.restarted and r.exit_code is None
    after = sandbox.run("pwd; echo [$GONE] $CWM_FROM_STARTUP")
    assert after.output == f"{workdir(sandbox)}\n[] 1\n"


def test_endless_output_ends_the_session_quickly(sandbox):
    r = sandbox.run("yes; echo never")
    assert r.status == RunStatus.OUTPUT_TOO_LONG and r.elapsed < 5 and len(r.output) <= 480 * 1024
    assert sandbox.run("echo next").output == "next\n"


def test_set_e_does_not_kill_later_commands(sandbox):
    sandbox.run("cd /tmp 2>/dev/null || cd ..; export MARK=kept")
    assert sandbox.run("set -e").exit_code == 0
    r = sandbox.run("false")
    assert (r.exit_code, r.status, r.restarted) == (1, RunStatus.OK, False)
    assert sandbox.run("echo $MARK").output == "kept\n"
    assert sandbox.run("set -u").exit_code == 0
    assert sandbox.run("echo [$NOT_SET]").output == "[]\n"
    sandbox.run(f"cd {workdir(sandbox)}")


def test_background_process_does_not_hold_the_session(sandbox):
    started = time.monotonic()
    r = sandbox.run("sleep 100 & echo started")
    assert r.output == "started\n" and time.monotonic() - started < 2
    assert sandbox.run("echo next").output == "next\n"


def test_timeout_ends_the_session_and_the_rest_of_the_line(sandbox):
    sandbox.run("export KEEP=1; cd /; rm -f /tmp/never")
    r = sandbox.run("echo before; sleep 2; touch /tmp/never", timeout=1)
    assert r.status == RunStatus.TIMEOUT and r.exit_code is None and r.restarted and r.elapsed < 4
    assert r.output == "before\n"  # kept for callers; the bash tool shows none of it
    time.sleep(1.5)
    after = sandbox.run("pwd; echo [$KEEP]; ls /tmp/never 2>&1 >/dev/null | wc -l")
    assert after.output == f"{workdir(sandbox)}\n[]\n1\n"


@pytest.mark.timeout(60)
def test_timeout_returns_while_an_earlier_background_job_keeps_writing(sandbox):
    # The job's output must not keep the session reading forever (nor pile up in memory).
    sandbox.run("(while :; do echo tick; sleep 0.01; done) & echo $! > /tmp/ticker.pid")
    try:
        r = sandbox.run("sleep 30", timeout=1)
        assert r.status == RunStatus.TIMEOUT and r.elapsed < 8
    finally:
        sandbox.run("kill $(cat /tmp/ticker.pid) 2>/dev/null; rm -f /tmp/ticker.pid")
    assert sandbox.run("sleep 0.2; echo next").output.endswith("next\n")


def test_stuck_shell_is_restarted_in_workdir(sandbox):
    sandbox.run("cd /; export GONE=1")
    r = sandbox.run("while :; do :; done", timeout=1)
    assert r.status == RunStatus.TIMEOUT and r.restarted and r.elapsed < 8
    after = sandbox.run("pwd; echo [$GONE] $CWM_FROM_CONFIG $CWM_FROM_STARTUP")
    assert after.output == f"{workdir(sandbox)}\n[] yes 1\n"


@pytest.mark.parametrize(
    "command, exit_code",
    [("echo bye; exit 3", 3), ("kill -9 $$", None), ("exec bash", None), ("set -e; false; echo unreachable", 1)],
)
def test_session_survives_the_shell_going_away(sandbox, command, exit_code):
    sandbox.run("cd /")
    r = sandbox.run(command, timeout=10)
    assert r.status == RunStatus.SESSION_DIED and r.restarted and r.exit_code == exit_code
    assert "unreachable" not in r.output and r.elapsed < 3
    assert sandbox.run("pwd; echo $CWM_FROM_STARTUP").output == f"{workdir(sandbox)}\n1\n"
