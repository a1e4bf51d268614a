"""One task through the pipeline: sandbox → repository → agent loop → trajectory, patch, diff.

`solve` calls this once; batch runs call it for every (task, rollout), sharing one model. Sandbox
work runs in threads so the event loop (and the model) never waits on Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cwm_agent import __version__
from cwm_agent.agent.config import RunConfig
from cwm_agent.agent.dialogue import Dialogue
from cwm_agent.agent.loop import Agent
from cwm_agent.agent.record import EpisodeRecord, ExitStatus, TokenTotals
from cwm_agent.agent.repo import checkout_copy, copy_checkout_in, head_commit, scrub_git_history, working_tree_diff
from cwm_agent.agent.task import Task
from cwm_agent.agent.trajectory import Header, Result, TrajectoryWriter, Turn
from cwm_agent.errors import UserError
from cwm_agent.model.base import Model
from cwm_agent.model.client import ModelError
from cwm_agent.prompts.release import load_release_texts
from cwm_agent.prompts.render import Message
from cwm_agent.prompts.texts import Texts
from cwm_agent.sandbox import make_sandbox
from cwm_agent.sandbox.base import Sandbox, SandboxError
from cwm_agent.tools import ToolContext

log = logging.getLogger(__name__)

TOOL_NAMES = ("bash", "edit", "create", "submit")


def size_thread_pool(concurrent_tasks: int) -> None:
    """Give the running event loop enough threads for `concurrent_tasks` episodes at once.

    Every sandbox call runs in a thread (`asyncio.to_thread`); the default pool has
    min(32, cores + 4) threads, which on a 2-core host would queue 64 rollouts' commands behind
    six threads. Call it from the coroutine that starts the episodes.
    """
    workers = 2 * max(1, concurrent_tasks) + 4
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cwm-sandbox")
    asyncio.get_running_loop().set_default_executor(executor)


def release_path(config: RunConfig) -> Path | None:
    """The checkout of CWM's release to take texts and plugins from: the config, else $CWM_RELEASE."""
    value = config.cwm_release or os.environ.get("CWM_RELEASE") or None
    return Path(value).expanduser() if value else None


def texts_for(config: RunConfig) -> Texts:
    release = release_path(config)
    return load_release_texts(release) if release is not None else Texts.ours()


async def use_token_ids(model: Model, config: RunConfig) -> bool:
    """Whether this episode's prompts go out as token ids (asked of the server once per model)."""
    mode = config.agent.token_ids
    if mode == "off" or config.model.api == "chat":
        return False
    known = getattr(model, "_cwm_token_ids", None)
    if known is None:
        known = await model.supports_token_ids()
        with contextlib.suppress(AttributeError):
            model._cwm_token_ids = known  # type: ignore[attr-defined]
        if not known and mode == "auto":
            log.warning("the model server takes no token-id prompts (vLLM >= 0.10.2 does): prompts go out as text")
    if mode == "on" and not known:
        raise ModelError("agent.token_ids is on, but the model server takes no token-id prompts (vLLM >= 0.10.2 does)")
    return known


def _sandbox_for(task: Task, config: RunConfig, run_id: str) -> Sandbox:
    sandbox_config = config.sandbox.model_copy(
        update={
            "image": task.image or config.sandbox.image,
            "workdir": task.repo_dir,
            "startup_commands": [*config.sandbox.startup_commands, *task.startup_commands],
            "run_id": run_id,
        }
    )
    return make_sandbox(sandbox_config)


def _prepare_repo(sandbox: Sandbox, task: Task, checkout: tuple[Path, str] | None) -> str:
    """Make the task's repository ready at `sandbox.workdir`; returns the base commit."""
    if checkout is not None:
        copy_checkout_in(sandbox, checkout[0], sandbox.workdir)
        base = checkout[1]
    else:
        base = task.base_commit or head_commit(sandbox, sandbox.workdir)
    # CWM scrubs the history of issue-solving episodes only; its test-generation episode sees the image as is.
    if task.scrub_history and task.kind == "patch":
        scrub_git_history(sandbox, base, sandbox.workdir)
    return base


@contextlib.asynccontextmanager
async def _host_checkout(task: Task) -> AsyncIterator[tuple[Path, str] | None]:
    """A clean host clone of `task.repo_source` at its base commit and that commit's sha, removed on
    exit; None when the image already has the repository."""
    if task.repo_source is None:
        yield None
        return
    scratch = Path(tempfile.mkdtemp(prefix="cwm-repo-"))
    try:
        sha = await asyncio.to_thread(checkout_copy, task.repo_source, task.base_commit, scratch / "repo")
        yield scratch / "repo", sha
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def run_task(
    task: Task,
    config: RunConfig,
    model: Model,
    trajectory_path: Path,
    run_id: str | None = None,
    on_turn: Callable[[Turn], None] | None = None,
) -> EpisodeRecord:
    """Run one episode of `task`; always writes the trajectory and always removes the sandbox.

    A `task.repo_source` that cannot be checked out raises `RepoError` before anything else happens
    (no container, no trajectory file); so does a bad `cwm_release`. `on_turn` sees every turn as it
    is recorded (live displays, `solve`'s stream).
    """
    started = time.monotonic()
    texts = texts_for(config)
    async with _host_checkout(task) as checkout:
        episode = _Episode(task, config, model, texts, trajectory_path, run_id or uuid.uuid4().hex[:12], on_turn)
        return await episode.run(checkout, started)


class _Episode:
    """The steps of `run_task` around the loop, with the one place its record is made."""

    def __init__(self, task, config, model, texts, trajectory_path, run_id, on_turn) -> None:
        self.task: Task = task
        self.config: RunConfig = config
        self.model: Model = model
        self.texts: Texts = texts
        self.path: Path = trajectory_path
        self.run_id: str = run_id
        self.on_turn = on_turn
        self.writer = TrajectoryWriter(trajectory_path)

    def _record_turn(self, turn: Turn) -> None:
        self.writer.write(turn)
        if self.on_turn is not None:
            self.on_turn(turn)

    async def run(self, checkout: tuple[Path, str] | None, started: float) -> EpisodeRecord:
        task, config = self.task, self.config
        sandbox = _sandbox_for(task, config, self.run_id)
        record = EpisodeRecord(task_id=task.task_id, status=ExitStatus.SANDBOX_ERROR, trajectory=str(self.path))
        agent: Agent | None = None
        try:
            ids = await use_token_ids(self.model, config)
            dialogue = Dialogue(
                self.model, reasoning=config.agent.reasoning, token_ids=ids, rollout=self.run_id + ":" + task.task_id
            )
            # The repository is at the sandbox's work directory: task.repo_dir in a container, a
            # temporary directory standing in for it with the local backend.
            make_user = self.texts.test_generation if task.kind == "test" else self.texts.issue
            system = Message.system(
                self.texts.system(
                    config.sandbox.command_timeout, config.agent.context_size, config.agent.max_turns, TOOL_NAMES
                )
            )
            user = Message.user(make_user(dialogue.safe(task.problem_statement), sandbox.workdir))
            # CWM caps the whole first user message, cutting from the left (the issue's end is kept).
            user = await dialogue.fit(user, config.agent.issue_max_tokens, keep="end")
            await dialogue.open(system, user)
            self.writer.write(
                Header(
                    run_id=self.run_id,
                    started_at=time.time(),
                    versions={
                        "cwm_agent": __version__,
                        "python": platform.python_version(),
                        "model": config.model.model or "",
                    },
                    task=task.model_dump(mode="json"),
                    config=config.model_dump(mode="json"),
                    reasoning=config.agent.reasoning,
                    system_prompt=system.content,
                    user_prompt=user.content,
                    prompt_ids=list(dialogue.ids) if dialogue.ids is not None else None,
                    texts=self.texts.source,
                )
            )
            await asyncio.to_thread(sandbox.start)
            record.base_commit = await asyncio.to_thread(_prepare_repo, sandbox, task, checkout)
            tools = ToolContext(
                sandbox=sandbox,
                repo_dir=sandbox.workdir,
                base_commit=record.base_commit,
                command_timeout=config.sandbox.command_timeout,
                submit_kind="file" if task.kind == "test" else "patch",
                **_release_tool_option(config),
            )
            agent = Agent(config.agent, config.sampling, self.model, tools, self.texts, record=self._record_turn,
                          strict=True if task.kind == "test" else None, tool_names=TOOL_NAMES)  # fmt: skip
            state = await agent.run(dialogue)
            record.status, record.detail = state.status, state.detail
            record.tokens.context = dialogue.tokens
            try:
                record.final_diff = await asyncio.to_thread(
                    working_tree_diff, sandbox, sandbox.workdir, record.base_commit
                )
            except UserError as exc:
                # The episode's ending and its accepted submission stand; say what is missing.
                record.detail = f"{record.detail}; " if record.detail else ""
                record.detail += f"the final diff could not be taken: {exc}"
        except (asyncio.CancelledError, KeyboardInterrupt):
            record.status, record.detail = ExitStatus.INTERRUPTED, "interrupted (Ctrl-C, SIGTERM or SIGHUP)"
            raise
        except ModelError as exc:
            record.status, record.detail = ExitStatus.MODEL_ERROR, str(exc)
        except SandboxError as exc:
            record.status, record.detail = ExitStatus.SANDBOX_ERROR, str(exc)
        finally:
            if agent is not None:
                state = agent.state
                record.turns, record.submission = state.turns, state.submission
                record.tokens = TokenTotals(prompt=state.prompt_tokens, completion=state.completion_tokens,
                                            cached=state.cached_tokens, context=record.tokens.context)  # fmt: skip
                record.model_seconds, record.tool_seconds = round(state.model_seconds, 3), round(state.tool_seconds, 3)
            record.graded = record.status is ExitStatus.SUBMITTED and record.submission is not None
            record.elapsed = round(time.monotonic() - started, 3)
            self.writer.write(Result(**record.model_dump()))
            self.writer.close()
            # Off the event loop (other rollouts keep talking to the model), and shielded so that
            # a second cancellation cannot leave the container behind.
            await asyncio.shield(asyncio.to_thread(sandbox.close))
        return record


def _release_tool_option(config: RunConfig) -> dict:
    """The tools' option for CWM's release (its edit/create plugins), when the tools support it."""
    release = release_path(config)
    if release is None:
        return {}
    import dataclasses

    names = {f.name for f in dataclasses.fields(ToolContext)}
    return {"cwm_release": release} if "cwm_release" in names else {}
