"""The reference side of the parity tests: CWM's own SWE environment class, run on scripted replies.

`run_reference` imports the environment classes from a checkout of CWM's release (nothing of it is
copied here), builds the two SWE-bench evaluation environments exactly as the release registers them
("swerl_tool_env:think_tag:modal:eval" for patches, "swerl_testgen_tool_env:think_tag:modal:eval" for
tests), and feeds them one scripted reply per step. What is CWM's and what is ours:

- CWM's: the env class and its registered config, its tokenizer class (on Llama 3's tiktoken file),
  `get_default_modal_backend` (so the session start script is composed by its code), the `ModalBackend`
  methods (`run_bash` with its exit-code call, `create_session`, `timed_out`, `destroy`), its
  `AsyncSession` (the persistent bash), its tool functions and its edit/create plugin scripts.
- Ours: Modal itself. A Docker container (network none) stands in for the Modal sandbox, `docker exec -i
  CONTAINER bash -c 'exec /bin/bash 2>&1'` for the sandbox's `/bin/bash`, and a private event loop in a
  thread for the in-sandbox server that holds the session. The sandbox's lifetime is enforced like
  Modal's: past it, the sandbox is gone and the next call fails. Grading is replaced by a recorder: the
  env's eval gets the submission and reports "fail" with a note, nothing runs.

Not thread-safe: an episode patches two names in CWM's modules while it runs. Needs a Docker engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import types
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PATCH_ENV = "swerl_tool_env:think_tag:modal:eval"
"""The registered name of CWM's issue-solving env used for SWE-bench evaluation."""
TEST_ENV = "swerl_testgen_tool_env:think_tag:modal:eval"
"""The registered name of CWM's test-generation env (test-time scaling)."""

RELEASE_ENV_VAR = "CWM_RELEASE"
PROJECT_LABEL = "io.cwm-agent.project"
PROJECT_VALUE = "cwm-agent"
OWNER_PID_LABEL = "io.cwm-agent.owner-pid"
OWNER_HOST_LABEL = "io.cwm-agent.owner-host"
OWNER_START_LABEL = "io.cwm-agent.owner-start"

DEFAULT_IMAGE = "cwm-agent/base:bookworm"
DEFAULT_REPO_FILES: dict[str, str] = {
    "calc/__init__.py": "from calc.ops import add\n",
    "calc/ops.py": "def add(a, b):\n    return a - b\n",
    "README.md": "calc: adds numbers.\n",
}
"""A tiny package with a bug (`add` subtracts)."""

_STUBBED_ROOTS = ("modal", "grpclib", "tenacity", "re2", "unidiff")
"""Imported by CWM's modules but never used on the paths run here (Modal, its retries, the code-execution
envs, the edit-distance reward); stubbed so the release imports without them."""

Ending = Literal["graded", "turn_limit", "context_limit", "format_error", "sandbox_timeout", "running"]


@dataclass
class ReferenceEpisode:
    """One episode of CWM's env, as the model saw it.

    `messages` splits `context_ids` at the chat-format tokens, in order: ("system", body), ("user", body),
    ("assistant", body), ("tool: bash", body), ... Each body is the text between the header's "\\n\\n" and
    the end-of-turn token, so:
    - an assistant body is the generation prefix the env put after the header ("<think>\\n" in these
      envs) followed by the reply as generated (the reply's own stop token is not in the body);
    - when the replies ran out (`ending == "running"`), the last message is the open generation prompt
      ("assistant", "<think>\\n"): it has no end-of-turn token;
    - a format error or an unknown tool is a ("user", "ErrorType: message") message.
    `actions` holds each reply as the env decoded it (cut at its stop token), one per step taken.
    """

    messages: list[tuple[str, str]]
    context_text: str
    """The whole context decoded: every observation and action token, special tokens as their strings."""
    context_ids: list[int]
    """The same context as token ids: the start observation, then each step's action and observation."""
    ending: Ending
    """Why it ended: "graded" (the env ended the episode and called its eval), "turn_limit",
    "context_limit", "format_error" (strict envs only: test generation), "sandbox_timeout" (the sandbox
    outlived its lifetime), or "running" (the replies ran out first)."""
    graded_submission: str | None
    """What the env passed to its eval (the patch, or the test file's content), when graded."""
    infos: list[dict]
    """Each transition's info dict: the start's first, then one per step."""
    actions: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Finding the release and the tokenizer file


def default_release() -> Path:
    """`$CWM_RELEASE`, else `<repo>/../shared/cwm-release`."""
    if os.environ.get(RELEASE_ENV_VAR):
        return Path(os.environ[RELEASE_ENV_VAR])
    return Path(__file__).resolve().parents[2].parent / "shared" / "cwm-release"


def default_tokenizer_model() -> Path | None:
    """Llama 3's tiktoken file, found as the project finds it (`cwm_agent.model.tokenizer.find_bpe_file`:
    an installed `llama_models`, else the fetch cache), or None when there is none."""
    try:
        from cwm_agent.model.tokenizer import find_bpe_file
    except ImportError:  # the project's module moved: look in llama_models only
        spec = importlib.util.find_spec("llama_models")
        for root in (spec.submodule_search_locations or []) if spec else []:
            for rel in ("llama3/tokenizer.model", "llama3/api/tokenizer.model"):
                if (Path(root) / rel).is_file():
                    return Path(root) / rel
        return None
    try:
        return find_bpe_file()
    except Exception:  # TokenizerNotFoundError
        return None


def missing_requirement(release: Path, tokenizer_model: Path | None) -> str | None:
    """Why `run_reference` cannot run here (a reason for a skip), or None."""
    if not (release / "cwm" / "rl" / "envs" / "envs" / "swerl_tool.py").is_file():
        return f"CWM's release is not at {release} (set ${RELEASE_ENV_VAR} to a checkout)"
    if importlib.util.find_spec("tiktoken") is None:
        return "tiktoken is not installed (pip install tiktoken)"
    if tokenizer_model is None:
        return "Llama 3's tokenizer.model is missing: run `python -m cwm_agent.model.tokenizer fetch`"
    if not tokenizer_model.is_file():
        return f"tokenizer file {tokenizer_model} does not exist"
    return None


# ---------------------------------------------------------------------------------------------------
# Importing CWM's code from the release


class _StubMeta(type):
    """A stand-in type: any attribute is another stand-in type, and calling one fails loudly."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(f"{cls.__name__}.{name}", (), {})

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{cls.__name__} is stubbed by the reference runner and must not be reached")


def _stub_modules() -> dict[str, types.ModuleType]:
    def stub(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__getattr__ = lambda attr: (  # type: ignore[method-assign]
            _StubMeta(f"{name}.{attr}", (), {}) if not attr.startswith("__") else _raise_attr(attr)
        )
        return mod

    tenacity = types.ModuleType("tenacity")
    # Only used to build a retry decorator at import time; it wraps Modal calls, which never run here.
    tenacity.retry = lambda *a, **k: lambda fn: fn  # type: ignore[attr-defined]
    for name in ("stop_after_attempt", "wait_exponential_jitter", "retry_if_exception_type"):
        setattr(tenacity, name, lambda *a, **k: None)

    unidiff = stub("unidiff")
    unidiff_errors = types.ModuleType("unidiff.errors")
    unidiff_errors.UnidiffParseError = type("UnidiffParseError", (Exception,), {})  # type: ignore[attr-defined]
    unidiff.errors = unidiff_errors  # type: ignore[attr-defined]
    return {
        "modal": stub("modal"),
        "grpclib": stub("grpclib"),
        "tenacity": tenacity,
        "re2": stub("re2"),
        "unidiff": unidiff,
        "unidiff.errors": unidiff_errors,
    }


def _raise_attr(name: str) -> Any:
    raise AttributeError(name)


def _is_swapped(name: str) -> bool:
    roots = ("cwm", *_STUBBED_ROOTS)
    return any(name == r or name.startswith(r + ".") for r in roots)


@dataclass(frozen=True)
class _Cwm:
    """Handles on the release's modules that the runner uses."""

    patch_env: types.ModuleType
    test_env: types.ModuleType
    env_config: types.ModuleType
    tokenizers: types.ModuleType
    default_backends: types.ModuleType
    modal_backend: types.ModuleType
    tools: types.ModuleType
    session: types.ModuleType
    eval_backend: types.ModuleType


_LOADED: dict[Path, _Cwm] = {}
_TOKENIZERS: dict[tuple[Path, Path], Any] = {}


def load_cwm(release: Path) -> _Cwm:
    """Import CWM's SWE env modules from `release`, once per path.

    The import runs with the release on sys.path and stubs for `_STUBBED_ROOTS` in sys.modules; both are
    put back as they were afterwards (the imported modules keep working through their own references).
    The package `cwm.rl.envs.envs` is entered without its `__init__`, which imports every env of the
    release (code execution, math) and their dependencies; only the two SWE env modules are loaded.
    """
    release = release.resolve()
    if release in _LOADED:
        return _LOADED[release]
    saved_path = list(sys.path)
    saved_modules = {n: m for n, m in sys.modules.items() if _is_swapped(n)}
    root_logger = logging.getLogger()
    saved_logging = (root_logger.level, list(root_logger.handlers))
    saved_bytecode = sys.dont_write_bytecode
    with warnings.catch_warnings():
        # Its string literals have invalid escapes; compiling them warns.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            sys.dont_write_bytecode = True  # leave the release checkout as it is
            for name in saved_modules:
                del sys.modules[name]
            sys.modules.update(_stub_modules())
            sys.path.insert(0, str(release))
            import_module = importlib.import_module
            envs_pkg = import_module("cwm.rl.envs")
            envs = types.ModuleType("cwm.rl.envs.envs")
            envs.__path__ = [str(release / "cwm" / "rl" / "envs" / "envs")]
            envs.__package__ = "cwm.rl.envs.envs"
            sys.modules["cwm.rl.envs.envs"] = envs
            envs_pkg.envs = envs  # type: ignore[attr-defined]
            cwm = _Cwm(
                patch_env=import_module("cwm.rl.envs.envs.swerl_tool"),
                test_env=import_module("cwm.rl.envs.envs.swerl_testgen_tool"),
                env_config=import_module("cwm.rl.envs.config"),
                tokenizers=import_module("cwm.text.tokenizers"),
                default_backends=import_module("cwm.rl.swerl.default_backends"),
                modal_backend=import_module("cwm.rl.swerl.modal_backend"),
                tools=import_module("cwm.rl.swerl.tools"),
                session=import_module("cwm.rl.swerl.remote.session"),
                eval_backend=import_module("cwm.rl.swerl.eval_backend.eval"),
            )
        finally:
            sys.dont_write_bytecode = saved_bytecode
            for name in [n for n in sys.modules if _is_swapped(n)]:
                del sys.modules[name]
            sys.modules.update(saved_modules)
            sys.path[:] = saved_path
            # The patch env's module configures the root logger at DEBUG on import; undo that.
            root_logger.setLevel(saved_logging[0])
            root_logger.handlers[:] = saved_logging[1]
    _LOADED[release] = cwm
    return cwm


def load_tokenizer(release: Path, tokenizer_model: Path) -> Any:
    """CWM's `CWMInstructTokenizer` on `tokenizer_model` (cached)."""
    key = (release.resolve(), tokenizer_model.resolve())
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_cwm(release).tokenizers.CWMInstructTokenizer(str(tokenizer_model))
    return _TOKENIZERS[key]


# ---------------------------------------------------------------------------------------------------
# The sandbox: a container, and the in-sandbox server's event loop


def _docker(*args: str, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(["docker", *args], input=input, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


def _owner_start_ticks() -> str:
    with contextlib.suppress(OSError, IndexError):
        return Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19]
    return ""


STARTED_CONTAINERS: list[str] = []
"""Every container this process started (for tests that check none is left)."""


def start_container(image: str) -> str:
    """Start a container like a Modal sandbox (workdir "/", no network) and return its name."""
    name = f"cwm-reference-{uuid.uuid4().hex[:12]}"
    STARTED_CONTAINERS.append(name)
    try:
        _docker(
            "run", "-d", "--name", name, "--network", "none", "--workdir", "/", "--entrypoint", "",
            "--label", f"{PROJECT_LABEL}={PROJECT_VALUE}",
            "--label", f"{OWNER_PID_LABEL}={os.getpid()}",
            "--label", f"{OWNER_HOST_LABEL}={socket.gethostname()}",
            "--label", f"{OWNER_START_LABEL}={_owner_start_ticks()}",
            image, "sleep", "infinity",
        )  # fmt: skip
    except BaseException:
        remove_container(name)  # a container that was created but did not start
        raise
    return name


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def put_repository(container: str, repo_dir: str, files: dict[str, str]) -> None:
    """Write `files` under `repo_dir` and commit them, so the model can make a `git diff` patch."""
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _docker("exec", container, "mkdir", "-p", repo_dir)
        _docker("cp", f"{tmp}/.", f"{container}:{repo_dir}")
    _docker(
        "exec", "-w", repo_dir, container, "sh", "-c",
        "git init -q && git add -A && git -c user.name=reference -c user.email=reference@localhost"
        " commit -qm 'initial commit'",
    )  # fmt: skip


# Sends SIGTERM to every process `docker exec` started in the container (parent pid 0 inside its pid
# namespace) but this one: the session's bash, as Modal's server terminates it. Killing the local
# `docker exec` client alone would leave that bash running the rest of the command it was sent.
_KILL_EXEC_ROOTS = r"""
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = 1 ] || [ "$p" = "$$" ] && continue
  read -r s < "$d/stat" 2>/dev/null || continue
  set -- ${s##*) }
  [ "$2" = 0 ] && kill -TERM "$p" 2>/dev/null
done
echo killed
"""


class _LoopThread:
    """A private event loop in a thread: the in-sandbox server that holds CWM's async session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cwm-reference-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run `coro` on the loop and return its result; past `timeout` it is cancelled there and
        TimeoutError is raised."""
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop).result()

    def call(self, fn: Any) -> Any:
        """Call `fn()` on the loop's thread (asyncio's process handles belong to it)."""

        async def call() -> Any:
            return fn()

        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class DockerSandbox:
    """Stands in for `modal.Sandbox` (what `ModalBackend` uses of it: poll, terminate, object_id)."""

    def __init__(self, container: str) -> None:
        self.object_id = container
        self.loop = _LoopThread()
        self.session: Any = None
        self._procs: list[Any] = []
        self._killers: list[subprocess.Popen[str]] = []
        self._dead = False
        self.expired = False
        """The sandbox outlived its lifetime (Modal would have killed it)."""

    def poll(self) -> int | None:
        return 0 if self._dead else None

    def terminate(self) -> None:
        if self._dead:
            return
        self._dead = True
        self.kill_session()

    def track(self) -> None:
        """Remember the session's current process, to reap it at close."""
        proc = getattr(self.session, "proc", None)
        if proc is not None and proc not in self._procs:
            self._procs.append(proc)

    def kill_session(self) -> None:
        if self.session is not None:
            self.track()
            self.loop.call(self.session.stop)
        killer = subprocess.Popen(
            ["docker", "exec", self.object_id, "sh", "-c", _KILL_EXEC_ROOTS],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # Done when the script says so: the docker client itself can linger for seconds while the engine
        # waits on the killed exec's output streams (held open by its orphaned children).
        assert killer.stdout is not None
        killer.stdout.readline()
        self._killers.append(killer)

    def close(self) -> None:
        """Stop the session and the loop (the container is removed by whoever started it)."""
        self.terminate()

        async def reap() -> None:
            for proc in self._procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)

        with contextlib.suppress(Exception):
            self.loop.run(reap(), timeout=15)
        self.loop.close()
        for killer in self._killers:  # their scripts are done; only the lingering clients are left
            if killer.poll() is None:
                killer.kill()
            killer.communicate()


def _local_backend_class(cwm: _Cwm) -> type:
    """A `ModalBackend` (CWM's protocol class, with its methods) whose client calls reach a session in a
    Docker container instead of a server in a Modal sandbox."""
    modal_backend = cwm.modal_backend

    class LocalModalBackend(modal_backend.ModalBackend):  # type: ignore[name-defined, misc]
        def __init__(self, config: Any, *, sandbox: DockerSandbox) -> None:
            # What `init_modal_sandbox` does, minus Modal: CWM's tools plus its plugins, whose scripts
            # are copied to the bind target the config names.
            self.config = config
            plugin_tools = cwm.tools.make_python_plugins_from_dir(
                config.plugin_root, config.bind_target, plugin_names=config.plugin_names
            )
            self._tools = {**config.tools, **plugin_tools}
            _docker("cp", f"{config.plugin_root}/.", f"{sandbox.object_id}:{config.bind_target}")
            self.sandbox = sandbox
            self.create_session()

        def run_client(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            # The in-sandbox server's handlers for the three calls ModalBackend makes, with a JSON round
            # trip as the real client has.
            sandbox = self.sandbox
            if sandbox.poll() is not None:
                raise modal_backend.ServerError("the sandbox is no longer running")
            name = method.__name__
            if name == "create_session":
                sandbox.session = cwm.session.AsyncSession(
                    # Modal's server starts /bin/bash with stderr on its stdout pipe. `docker exec` carries
                    # the two streams apart and its client merges them out of order (stderr can come after
                    # the end marker), so they are joined inside the container, as there.
                    command_args=["docker", "exec", "-i", sandbox.object_id, "bash", "-c", "exec /bin/bash 2>&1"],
                    timeout=kwargs["session_timeout"],
                    start_script=kwargs.get("start_script"),
                )
                return None
            if name == "run_session":
                coro = sandbox.session.communicate(kwargs["command"], sanitize=kwargs.get("sanitize", True))
            elif name == "get_exitcode":
                coro = sandbox.session.get_exitcode()
            else:
                raise NotImplementedError(f"reference backend: client method {name}")
            result = self._within_lifetime(coro)
            sandbox.track()
            if name == "run_session" and result["status"] == "error":
                sandbox.kill_session()
            return json.loads(json.dumps(result))

        def _within_lifetime(self, coro: Any) -> Any:
            # Modal kills a sandbox at its lifetime; past it every call fails.
            left = None
            if hasattr(self, "sandbox_start_time"):
                left = self.config.sandbox_timeout - self.duration
                if left <= 0:
                    coro.close()
                    self.sandbox.expired = True
                    self.sandbox.terminate()
                    raise modal_backend.ServerError("the sandbox outlived its lifetime")
            try:
                return self.sandbox.loop.run(coro, timeout=left)
            except TimeoutError:
                self.sandbox.expired = True
                self.sandbox.terminate()
                raise modal_backend.ServerError("the sandbox outlived its lifetime") from None

    return LocalModalBackend


# ---------------------------------------------------------------------------------------------------
# The episode


@dataclass
class _GradeRecorder:
    submissions: list[str] = field(default_factory=list)


def split_messages(tokenizer: Any, ids: list[int]) -> list[tuple[str, str]]:
    """The context's messages as (role, body), split at the header and end tokens (see ReferenceEpisode)."""
    ends = {tokenizer.eot_id, tokenizer.eom_id}
    messages: list[tuple[str, str]] = []
    i = 0
    while i < len(ids):
        if ids[i] != tokenizer.header_start_id:
            i += 1
            continue
        j = ids.index(tokenizer.header_end_id, i)
        role = tokenizer.decode(ids[i + 1 : j], cut_at_stop_tokens=False)
        k = j + 1
        while k < len(ids) and ids[k] not in ends and ids[k] != tokenizer.header_start_id:
            k += 1
        text = tokenizer.decode(ids[j + 1 : k], cut_at_stop_tokens=False)
        assert text.startswith("\n\n"), text[:20]
        messages.append((role, text[2:]))
        i = k
    return messages


def run_reference(
    release: Path,
    replies: list[str],
    *,
    kind: Literal["patch", "test"] = "patch",
    issue: str,
    image: str = DEFAULT_IMAGE,
    repo_files: dict[str, str] | None = None,
    repo_dir: str = "/testbed",
    config: dict[str, Any] | None = None,
    tokenizer_model: Path | None = None,
) -> ReferenceEpisode:
    """Run CWM's registered evaluation env (`PATCH_ENV` or `TEST_ENV`) on `replies`, one per step.

    `config` overrides fields of the registered `SWERLConfig` (e.g. max_turns, context_size,
    session_timeout, sandbox_timeout, max_user_turn_len, max_prompt_len). Each reply is encoded with CWM's
    tokenizer and ends with `<|eot_id|>`, as a server returns a reply that stopped at its stop token. The
    episode stops at the first terminal transition, or when the replies run out. The container is removed
    whatever happens; an error raised by the env itself propagates.
    """
    tokenizer_model = tokenizer_model or default_tokenizer_model()
    reason = missing_requirement(release, tokenizer_model)
    if reason:
        raise FileNotFoundError(reason)
    assert tokenizer_model is not None
    cwm = load_cwm(release)
    tokenizer = load_tokenizer(release, tokenizer_model)
    env_module = cwm.patch_env if kind == "patch" else cwm.test_env
    registered = cwm.env_config.get_env_config(PATCH_ENV if kind == "patch" else TEST_ENV)
    env_config = dataclasses.replace(registered.init_kwargs["config"], **(config or {}))
    env = registered.cls(tokenizer=tokenizer, **{**registered.init_kwargs, "config": env_config})

    recorder = _GradeRecorder()
    backend_class = _local_backend_class(cwm)
    container = start_container(image)
    sandbox: DockerSandbox | None = None
    has_default_python = False

    def get_backend(**kwargs: Any) -> Any:
        if not has_default_python:
            kwargs["server_python_path"] = "python3"
        saved = cwm.default_backends.ModalBackend_NoTunnel
        cwm.default_backends.ModalBackend_NoTunnel = functools.partial(backend_class, sandbox=sandbox)
        try:
            return cwm.default_backends.get_default_modal_backend(**kwargs)
        finally:
            cwm.default_backends.ModalBackend_NoTunnel = saved

    original_eval = inspect.signature(env_module.eval_instance)

    def record_grade(*args: Any, **kwargs: Any) -> Any:
        bound = original_eval.bind(*args, **kwargs).arguments
        recorder.submissions.append(bound["pred_patch"] if "pred_patch" in bound else bound["test"])
        return cwm.eval_backend.EvalResult(outcome="fail", message="not graded: reference runner")

    patches = {"get_default_modal_backend": get_backend, "eval_instance": record_grade}
    saved = {name: getattr(env_module, name) for name in patches}
    state = None
    try:
        sandbox = DockerSandbox(container)
        # CWM's code asks for this python for its plugins; images without it run them with python3.
        probe = ["docker", "exec", container, "test", "-x", cwm.default_backends.DEFAULT_PYTHON_PATH]
        has_default_python = subprocess.run(probe).returncode == 0
        put_repository(container, repo_dir, repo_files if repo_files is not None else DEFAULT_REPO_FILES)
        for name, value in patches.items():
            setattr(env_module, name, value)
        episode_args = {
            "instance_id": "cwm-reference",
            "issue": issue,
            "patch": "",
            "docker_url": image,
            "repo_root_path": repo_dir,
        }
        state, start = env.start(episode_args)
        context = list(start.observation)
        infos = [start.info]
        actions: list[str] = []
        ending: Ending = "running"
        graded: str | None = None
        for reply in replies:
            action = tokenizer.encode(reply, bos=False, eos=False) + [tokenizer.eot_id]
            grades_before = len(recorder.submissions)
            transition = env.step(state, action)
            context += transition.action + transition.observation
            infos.append(transition.info)
            actions.append(transition.action_str)
            if transition.terminal:
                # Told apart by the state the env checked, not by its info messages (its own texts).
                if len(recorder.submissions) > grades_before:
                    ending, graded = "graded", recorder.submissions[-1]
                elif state.num_tokens > env_config.context_size:
                    ending = "context_limit"
                elif state.step_id >= env_config.max_turns:
                    ending = "turn_limit"
                elif sandbox.expired:
                    ending = "sandbox_timeout"
                else:
                    ending = "format_error"  # the strict (test-generation) env's end on a format error
                break
        return ReferenceEpisode(
            messages=split_messages(tokenizer, context),
            context_text=tokenizer.decode(context, cut_at_stop_tokens=False),
            context_ids=context,
            ending=ending,
            graded_submission=graded,
            infos=infos,
            actions=actions,
        )
    finally:
        for name, value in saved.items():
            setattr(env_module, name, value)
        try:
            if state is not None:
                state.close()
            if sandbox is not None:
                sandbox.close()
        finally:
            remove_container(container)
