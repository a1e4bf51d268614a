"""The Docker backend: one container per sandbox, one attached `docker exec -i bash` stream for its session.

The container's main process only keeps it alive (`sleep infinity` under Docker's init);
the session is a `bash` started with `exec_create`/`exec_start(socket=True)` and driven by
`BashSession`. Files move with the archive API, so nothing but bash and coreutils has to
be in the image.
"""

from __future__ import annotations

import io
import logging
import posixpath
import select
import socket
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors

from cwm_agent.sandbox import cleanup
from cwm_agent.sandbox.base import (
    RUN_ID_LABEL,
    DiskLimitError,
    FileTooLargeError,
    ImageNotFoundError,
    RunResult,
    SandboxConfig,
    SandboxError,
    format_size,
)
from cwm_agent.sandbox.images import docker_client
from cwm_agent.sandbox.session import BashSession

log = logging.getLogger(__name__)

_DIR_BIT = 1 << 31  # Go's os.ModeDir, as the archive API reports modes
_SYMLINK_BIT = 1 << 27
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")

# The exec's main process. The session's output goes through a FIFO and a `cat` relay to the
# exec's stream, so a process the session puts in the background holds only the FIFO: when
# the session dies the relay is stopped and the exec ends at once (Docker otherwise waits for
# every holder of the stream, and blocks other execs of the container meanwhile).
_SESSION_MAIN = r"""
d=$(mktemp -d /tmp/.cwm-session.XXXXXX) && mkfifo "$d/out" || exit 97
exec 2>/dev/null  # no job notices ("Killed") of our own in the output
cat "$d/out" & relay=$!
bash --noprofile --norc > "$d/out" 2>&1
rm -rf "$d"
sleep 0.05
kill -9 $relay 2>/dev/null
"""


_quota_supported: bool | None = None
"""Whether the engine takes a disk quota (`--storage-opt size=`): learnt from the first container."""


class _DiskWatch:
    """One thread that measures, every `disk_check_seconds`, what each watched container has written
    (its writable layer), and stops a container over its `disk` limit (engines without a quota)."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[DockerSandbox, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, sandbox: DockerSandbox) -> None:
        with self._lock:
            self._watched[id(sandbox)] = (sandbox, time.monotonic() + sandbox.config.disk_check_seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="cwm-disk-watch", daemon=True)
                self._thread.start()

    def remove(self, sandbox: DockerSandbox) -> None:
        with self._lock:
            self._watched.pop(id(sandbox), None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    self._thread = None
                    return
                due = [(key, sb) for key, (sb, at) in self._watched.items() if at <= time.monotonic()]
            for key, sandbox in due:
                sandbox._check_disk()
                with self._lock:
                    if key in self._watched:
                        self._watched[key] = (sandbox, time.monotonic() + sandbox.config.disk_check_seconds)
            time.sleep(0.2)


_disk_watch = _DiskWatch()


class _ChunkReader(io.RawIOBase):
    """A file object over the archive API's chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _ExecStream:
    """The hijacked socket of a `docker exec -i` without a tty: frames of (stream, size, bytes)."""

    def __init__(self, api: docker.APIClient, exec_id: str, sock: Any) -> None:
        self.api = api
        self.exec_id = exec_id
        self._io = sock
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        self._buf = bytearray()
        self._eof = False

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def read(self, timeout: float) -> bytes | None:
        if self._eof:
            return b""
        out = self._frames()
        if out:
            return out
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                ready, _, _ = select.select([self._sock], [], [], remaining)
            except (OSError, ValueError):  # closed under us (the sandbox was closed)
                self._eof = True
                return b""
            if not ready:
                return None
            try:
                chunk = self._sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._eof = True
                return self._frames() or b""
            self._buf += chunk
            out = self._frames()
            if out:
                return out

    def _frames(self) -> bytes:
        """Payloads of the complete frames in the buffer (stdout and stderr alike, in order)."""
        out = bytearray()
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            size = struct.unpack(">I", buf[pos + 4 : pos + 8])[0]
            if len(buf) - pos - 8 < size:
                break
            out += buf[pos + 8 : pos + 8 + size]
            pos += 8 + size
        del buf[:pos]
        return bytes(out)

    def alive(self) -> bool:
        try:
            return bool(self.api.exec_inspect(self.exec_id).get("Running"))
        except docker.errors.APIError:
            return False

    def close(self) -> None:
        for closer in (self._sock.close, self._io.close):
            try:
                closer()
            except OSError:
                pass


class _ContainerHost:
    """`ShellHost` for a running container."""

    orphans_are_ours = True

    def __init__(self, sandbox: DockerSandbox) -> None:
        self.sandbox = sandbox

    @property
    def api(self) -> docker.APIClient:
        return self.sandbox.client.api

    def spawn_shell(self, workdir: str, env: dict[str, str]) -> _ExecStream:
        cid = self.sandbox.container_id
        try:
            exec_id = self.api.exec_create(
                cid,
                ["bash", "-c", _SESSION_MAIN],
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                workdir=workdir,
                environment=env,
            )["Id"]
            sock = self.api.exec_start(exec_id, socket=True)
        except docker.errors.APIError as exc:
            if "is not running" in str(exc.explanation or exc) or "stopped" in str(exc.explanation or exc):
                raise SandboxError(
                    f"Container {self.sandbox.name} has stopped ({exc.explanation or exc}); the sandbox cannot go "
                    "on (did a command kill every process in it?)"
                ) from exc
            raise SandboxError(f"Could not start bash in container {self.sandbox.name}: {exc}") from exc
        return _ExecStream(self.api, exec_id, sock)

    def run_helper(self, script: str, args: list[str], timeout: float) -> bool:
        try:
            exec_id = self.api.exec_create(self.sandbox.container_id, ["bash", "-c", script, "cwm-helper", *args])["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
            if code != 0:  # e.g. no pid left to start it with
                log.warning("helper in %s failed (exit %s): %s", self.sandbox.name, code, output[-300:])
            return code == 0
        except docker.errors.APIError as exc:
            log.warning("helper in %s could not run: %s", self.sandbox.name, exc)
            return False

    def reset(self) -> None:
        # Killing the container's init kills every process in its pid namespace; files stay.
        log.warning("restarting container %s: no process could be started in it", self.sandbox.name)
        try:
            self.sandbox.container.restart(timeout=0)
        except docker.errors.APIError as exc:
            raise SandboxError(f"Container {self.sandbox.name} could not be restarted: {exc}") from exc


class DockerSandbox:
    """A sandbox in a Docker container. See `cwm_agent.sandbox.base.Sandbox` for the contract.

    `run_id` is `config.run_id` or a generated one; the container is named `cwm-RUNID-XXXXXX`.
    Files written or copied in belong to the session's user (an overwritten file keeps its owner).
    """

    def __init__(self, config: SandboxConfig, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self._client = client
        self._owns_client = client is None
        """A client made here is closed with the sandbox (its connection pool would outlive it)."""
        self.run_id = config.run_id or uuid.uuid4().hex[:12]
        self.name = f"cwm-{self.run_id}-{uuid.uuid4().hex[:6]}"
        self.container: Any = None
        self.session: BashSession | None = None
        self._closed = False
        self._quota = False
        self.disk_exceeded: int | None = None
        """Bytes written when the disk watch stopped the sandbox (None: it did not)."""
        # Here, not only in start(): start() often runs in a worker thread, where no signal
        # handler can be installed.
        cleanup.install_handlers()

    # -- life cycle -------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def container_id(self) -> str:
        if self.container is None:
            raise SandboxError("The sandbox is not started.")
        return self.container.id

    @property
    def workdir(self) -> str:
        """The directory the session starts in (inside the container)."""
        return self.config.workdir

    def start(self) -> None:
        if self._closed:
            raise SandboxError("The sandbox is closed.")
        if self.session is not None:
            return
        cleanup.track(self)
        try:
            self._ensure_image()
            self._create_container()
            if self._closed:
                # close() ran in another thread (a signal, a cancelled task) while the container was
                # being created, so it removed nothing: remove it here.
                self._remove_container()
                raise SandboxError("The sandbox was closed while it was starting.")
            self.session = BashSession.for_sandbox(_ContainerHost(self), self.config.workdir, self.config)
            self.session.start()
        except BaseException:
            self.close()
            raise

    def _ensure_image(self) -> None:
        image = self.config.image
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        if not self.config.allow_pull:
            hint = "run `cwm-agent setup`" if image.startswith("cwm-agent/base") else "build or load it (`docker load`)"
            raise ImageNotFoundError(
                f"Image {image} is not on the Docker engine: {hint}, or allow pulling it (allow_pull)."
            )
        try:
            log.info("pulling %s", image)
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise ImageNotFoundError(f"Image {image} is not on the engine and pulling it failed: {exc}") from exc

    def _create_container(self) -> None:
        c = self.config
        labels = {**cleanup.owner_labels(), RUN_ID_LABEL: self.run_id}
        try:
            self.container = self.client.containers.run(
                c.image,
                entrypoint=["sleep", "infinity"],
                command=[],
                name=self.name,
                detach=True,
                init=True,
                labels=labels,
                network_mode="host" if c.network == "host" else "none",
                mem_limit=c.memory,
                memswap_limit=c.memory,  # no swap on top: the limit is the limit
                nano_cpus=int(c.cpus * 1e9),
                pids_limit=c.pids_limit,
                privileged=False,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                cap_add=list(c.cap_add),
                working_dir=c.workdir,  # created by Docker when missing
                stdin_open=False,
                tty=False,
                **self._quota_option(),
            )
        except docker.errors.APIError as exc:
            if self._quota and _quota_refused(exc):
                global _quota_supported
                _quota_supported = False  # probed once per process: later containers use the watch
                log.info("the engine has no disk quota (%s): watching container sizes instead", exc.explanation)
                return self._create_container()
            raise SandboxError(f"Could not start a container from {c.image}: {exc}") from exc
        if self._quota:
            _quota_supported = True
        elif c.disk is not None:
            _disk_watch.add(self)

    def _quota_option(self) -> dict[str, Any]:
        self._quota = self.config.disk is not None and _quota_supported is not False
        return {"storage_opt": {"size": self.config.disk}} if self._quota else {}

    def _check_disk(self) -> None:
        """Stop the sandbox when its container has written more than `config.disk` (the watch's check)."""
        limit = self.config.disk_bytes
        if self._closed or limit is None or self.container is None:
            return
        try:
            api = self.client.api
            url = api._url("/containers/{0}/json", self.container.id)
            written = api._result(api._get(url, params={"size": 1}), True).get("SizeRw") or 0
        except (docker.errors.APIError, SandboxError, OSError):
            return
        if written > limit:
            self.disk_exceeded = written
            log.warning("container %s wrote %s, over its disk limit %s: stopped", self.name, written, limit)
            _disk_watch.remove(self)
            self._remove_container()

    def _disk_error(self) -> DiskLimitError:
        return DiskLimitError(
            f"The sandbox wrote {format_size(self.disk_exceeded or 0)} to its file system, over its disk limit "
            f"(sandbox.disk: {self.config.disk}), and was stopped."
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cleanup.untrack(self)
        _disk_watch.remove(self)
        if self.session is not None:
            self.session._closed = True
            if self.session._stream is not None:
                self.session._stream.close()
        self._remove_container()
        if self._owns_client and self._client is not None:
            self._client.close()

    def _remove_container(self) -> None:
        try:
            # By name: also covers a container created by a call that was interrupted.
            self.client.api.remove_container(self.container.id if self.container else self.name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                log.warning("could not remove container %s: %s", self.name, exc)
        except SandboxError:
            pass  # no engine: nothing we could remove

    def __enter__(self) -> DockerSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DockerSandbox({self.name}, image={self.config.image})"

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        if self.disk_exceeded is not None:
            raise self._disk_error()
        if self.session is None:
            self.start()
        assert self.session is not None
        try:
            return self.session.run(command, timeout)
        except SandboxError:
            if self.disk_exceeded is not None:
                raise self._disk_error() from None
            raise

    # -- files ------------------------------------------------------------------------------

    def _abs(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.config.workdir, path))

    def _owner(self, path: str) -> tuple[int, int] | None:
        """(uid, gid) of an existing regular file, from its archive header alone; None when there is none."""
        if self.container is None:
            self.start()
        try:
            bits, stat = self.container.get_archive(path)
        except docker.errors.NotFound:
            return None
        if stat["mode"] & _DIR_BIT:
            raise IsADirectoryError(f"{path}: is a directory")
        if stat["mode"] & _SYMLINK_BIT:
            return None
        member = tarfile.open(fileobj=io.BufferedReader(_ChunkReader(bits), 1 << 16), mode="r|").next()
        return (member.uid, member.gid) if member is not None else None

    def _open(self, path: str, follow_symlinks: bool) -> tuple[Any, int, str]:
        """(a stream of the regular file's bytes, its size, its path after links) without reading it."""
        if self.container is None:
            self.start()
        for _ in range(16):  # follow symlinks, a bounded number of times
            try:
                bits, stat = self.container.get_archive(path)
            except docker.errors.NotFound:
                raise FileNotFoundError(f"{path}: no such file in the sandbox") from None
            except docker.errors.APIError as exc:
                if self.disk_exceeded is not None:
                    raise self._disk_error() from None
                raise SandboxError(f"Reading {path} failed: {exc.explanation or exc}") from exc
            mode = stat["mode"]
            if mode & _DIR_BIT:
                raise IsADirectoryError(f"{path}: is a directory")
            tar = tarfile.open(fileobj=io.BufferedReader(_ChunkReader(bits), 1 << 20), mode="r|")
            member = tar.next()
            if member is None:
                raise FileNotFoundError(path)
            if member.issym() and follow_symlinks:
                path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
                continue
            if not member.isreg():
                raise IsADirectoryError(f"{path}: not a regular file")
            return tar.extractfile(member), member.size, path
        raise OSError(f"{path}: too many levels of symbolic links")

    def read_file(self, path: str, max_bytes: int | None = None, follow_symlinks: bool = True) -> bytes:
        cap = max_bytes if max_bytes is not None else self.config.max_read_bytes
        f, size, path = self._open(self._abs(path), follow_symlinks)
        if size > cap:
            cap_name = "" if max_bytes is not None else " (sandbox.max_read_bytes)"
            raise FileTooLargeError(f"{path} is {format_size(size)}, over the cap of {format_size(cap)}{cap_name}")
        return f.read(cap)

    def read_head_tail(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        f, size, _ = self._open(self._abs(path), True)
        return _head_tail(f, size, max_bytes)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._abs(path)
        uid, gid = self._owner(path) or self._session_owner()
        parent, name = posixpath.split(path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, int(time.time()), uid, gid
            tar.addfile(info, io.BytesIO(data))
        self._put(parent or "/", buf.getvalue())

    def _put(self, directory: str, archive: Any) -> None:
        try:
            ok = self.container.put_archive(directory, archive)
        except docker.errors.NotFound:
            raise FileNotFoundError(f"{directory}: no such directory in the sandbox") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"Copying into {directory} failed: {exc.explanation or exc}") from exc
        if not ok:
            raise SandboxError(f"Copying into {directory} failed.")

    def _session_owner(self) -> tuple[int, int]:
        if self.session is None:
            self.start()
        assert self.session is not None
        return self.session.uid, self.session.gid

    def copy_in(self, src: Path, dest: str) -> None:
        """A directory's contents go into `dest`; a file goes to `dest/NAME`; a .tar (.gz, .xz, .bz2)
        archive is unpacked into `dest`. `dest` is created when missing."""
        src = Path(src)
        dest = self._abs(dest)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such file or directory")
        uid, gid = self._session_owner()
        self._mkdir(dest)
        if src.is_file() and src.name.endswith(_ARCHIVE_SUFFIXES):
            with open(src, "rb") as f:
                self._put(dest, f)
            return

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            return info

        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w") as tar:
                if src.is_dir():
                    for child in sorted(src.iterdir()):
                        tar.add(child, arcname=child.name, filter=owned)
                else:
                    tar.add(src, arcname=src.name, filter=owned)
            tmp.seek(0)
            self._put(dest, tmp)

    def _mkdir(self, path: str) -> None:
        result = self.container.exec_run(["mkdir", "-p", "--", path], user=f"{self.session.uid}:{self.session.gid}")
        if result.exit_code != 0:
            raise SandboxError(
                f"Could not create {path} in the sandbox: {result.output.decode(errors='replace').strip()}"
            )

    def copy_out(self, src: str, dest: Path) -> None:
        """`src` (a file or a directory, kept under its own name) lands in the host directory `dest`."""
        src = self._abs(src)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if self.container is None:
            self.start()
        try:
            bits, _ = self.container.get_archive(src)
        except docker.errors.NotFound:
            raise FileNotFoundError(f"{src}: no such file in the sandbox") from None
        with tempfile.TemporaryFile() as tmp:
            for chunk in bits:
                tmp.write(chunk)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                tar.extractall(dest, filter=_safe_member)


def _head_tail(f: Any, size: int, max_bytes: int) -> tuple[bytes, int]:
    """The first and last `max_bytes // 2` bytes of a stream of `size` bytes, and the bytes left out."""
    if size <= max_bytes:
        return f.read(size), 0
    half = max_bytes // 2
    head = f.read(half)
    skip = size - 2 * half
    while skip > 0:
        got = len(f.read(min(skip, 1 << 20)))
        if not got:
            break
        skip -= got
    return head + f.read(half), size - 2 * half


def _quota_refused(exc: docker.errors.APIError) -> bool:
    """The engine's answer to a disk quota it cannot give (overlay2 not on xfs with pquota, other drivers)."""
    text = str(exc.explanation or exc).lower()
    return "storage-opt" in text or "storage opt" in text or "quota" in text or "storageopt" in text


def _safe_member(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter, except that a link pointing outside the copy (`python -> /usr/bin/python3`,
    common in repositories and venvs) is skipped with a warning instead of failing the whole copy."""
    try:
        return tarfile.data_filter(member, path)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        log.warning("copy_out: skipped %s, a link to %s outside the copied tree", member.name, member.linkname)
        return None
