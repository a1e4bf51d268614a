"""The local backend: no container, no isolation. Commands run as this user on this host.

For hosts without Docker, demos and tests. The sandbox is a fresh temporary directory
(removed on close) and the session starts there instead of `config.workdir`. Paths given to
the file methods are mapped: a relative path, or one under `config.workdir` (e.g.
`/testbed/a.py`), lands in the temporary directory (`TMP/a.py`); any other absolute path is
a host path. Inside the session nothing is mapped: `cd /testbed` fails, `cd $CWM_WORKDIR`
or a relative path works. Network, memory, CPU and pids limits do not apply.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path

from cwm_agent.sandbox import cleanup
from cwm_agent.sandbox.base import FileTooLargeError, RunResult, SandboxConfig, SandboxError, format_size
from cwm_agent.sandbox.session import BashSession

log = logging.getLogger(__name__)

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


class _PipeStream:
    """A local bash's stdin and (stdout+stderr) pipes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._fd = proc.stdout.fileno()  # type: ignore[union-attr]
        self._eof = False

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise OSError(str(exc)) from exc

    def read(self, timeout: float) -> bytes | None:
        if self._eof:
            return b""
        try:
            ready, _, _ = select.select([self._fd], [], [], max(timeout, 0))
            if not ready:
                return None
            chunk = os.read(self._fd, 1 << 20)
        except (OSError, ValueError):  # closed under us (the sandbox was closed)
            chunk = b""
        if not chunk:
            self._eof = True
        return chunk

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        # The whole process group: background jobs outlive a shell that died, but not its sandbox.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class _LocalHost:
    """`ShellHost` on this machine. Processes re-parented to init are not ours to kill here."""

    orphans_are_ours = False

    def __init__(self) -> None:
        self.stream: _PipeStream | None = None

    def spawn_shell(self, workdir: str, env: dict[str, str]) -> _PipeStream:
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **env},
            start_new_session=True,  # its own process group, so a reset can kill all of it
        )
        self.stream = _PipeStream(proc)
        return self.stream

    def run_helper(self, script: str, args: list[str], timeout: float) -> bool:
        try:
            subprocess.run(["bash", "-c", script, "cwm-helper", *args], timeout=timeout, capture_output=True)
            return True
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("helper could not run: %s", exc)
            return False

    def reset(self) -> None:
        if self.stream is not None and self.stream.alive():
            try:
                os.killpg(self.stream.proc.pid, signal.SIGKILL)
            except OSError:
                pass


class LocalSandbox:
    """An UNSAFE sandbox: a temporary directory on this host. Same session semantics as Docker."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.root: Path | None = None
        self.session: BashSession | None = None
        self._closed = False
        # Here, not only in start(): start() often runs in a worker thread, where no signal
        # handler can be installed.
        cleanup.install_handlers()

    @property
    def workdir(self) -> str:
        """The temporary directory the session starts in (a host path); made on first use, so the
        prompt can name it before the session starts. `close()` removes it."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="cwm-local-"))
        return str(self.root)

    def start(self) -> None:
        if self._closed:
            raise SandboxError("The sandbox is closed.")
        if self.session is not None:
            return
        log.warning("local sandbox: commands run on this host without any isolation")
        cleanup.track(self)
        try:
            self.session = BashSession.for_sandbox(
                _LocalHost(), self.workdir, self.config, {"CWM_WORKDIR": self.workdir}
            )
            self.session.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cleanup.untrack(self)
        if self.session is not None:
            self.session.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        if self.session is None:
            self.start()
        assert self.session is not None
        return self.session.run(command, timeout)

    def host_path(self, path: str) -> Path:
        """Where a sandbox path lives on this host (see the module docstring)."""
        if self.root is None:
            self.start()
        assert self.root is not None
        workdir = self.config.workdir.rstrip("/") or "/"
        if not os.path.isabs(path):
            return self.root / path
        if path == workdir or path.startswith(workdir + "/"):
            return self.root / os.path.relpath(path, workdir)
        return Path(path)

    def read_file(self, path: str, max_bytes: int | None = None, follow_symlinks: bool = True) -> bytes:
        cap = max_bytes if max_bytes is not None else self.config.max_read_bytes
        target = self.host_path(path)
        if not follow_symlinks and target.is_symlink():
            raise IsADirectoryError(f"{path}: not a regular file")
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > cap:
                cap_name = "" if max_bytes is not None else " (sandbox.max_read_bytes)"
                raise FileTooLargeError(f"{path} is {format_size(size)}, over the cap of {format_size(cap)}{cap_name}")
            return f.read(cap)

    def read_head_tail(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        with open(self.host_path(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= max_bytes:
                return f.read(), 0
            half = max_bytes // 2
            head = f.read(half)
            f.seek(size - half)
            return head + f.read(half), size - 2 * half

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = self.host_path(path)
        if target.is_dir():
            raise IsADirectoryError(f"{path}: is a directory")
        existed = target.exists()
        target.write_bytes(data)
        if not existed:
            os.chmod(target, mode)

    def copy_in(self, src: Path, dest: str) -> None:
        """Same layout as `DockerSandbox.copy_in`."""
        src = Path(src)
        target = self.host_path(dest)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such file or directory")
        target.mkdir(parents=True, exist_ok=True)
        if src.is_file() and src.name.endswith(_ARCHIVE_SUFFIXES):
            with tarfile.open(src) as tar:
                tar.extractall(target, filter="data")
        elif src.is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target / src.name)

    def copy_out(self, src: str, dest: Path) -> None:
        source = self.host_path(src)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest / source.name, symlinks=True, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, dest / source.name)
        else:
            raise FileNotFoundError(f"{src}: no such file in the sandbox")

    def __repr__(self) -> str:
        return f"LocalSandbox({self.root})"
