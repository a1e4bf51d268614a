"""One task through the pipeline: sandbox → repository → agent loop → trajectory, patch, diff.

`solve` calls this once; batch runs (SWE-bench, rollouts) call it for every (task, rollout)
from a pool of asyncio workers sharing one model client. Sandbox work runs in threads so the
event loop (and the model) never waits on Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from cwm_agent import __version__
from cwm_agent.agent.config import RunConfig
from cwm_agent.agent.loop import Agent, cut_to_tokens
from cwm_agent.agent.repo import checkout_copy, copy_checkout_in, head_commit, scrub_git_history, working_tree_diff
from cwm_agent.agent.task import Task
from cwm_agent.agent.trajectory import ExitStatus, Header, Result, TrajectoryWriter
from cwm_agent.model.client import ModelClient, ModelError
from cwm_agent.prompts.render import defuse_special_tokens
from cwm_agent.prompts.templates import issue_prompt, system_prompt, test_generation_prompt
from cwm_agent.sandbox import make_sandbox
from cwm_agent.sandbox.base import Sandbox, SandboxError
from cwm_agent.tools import ToolContext


@dataclass
class RunOutcome:
    """What one episode produced. `patch` is the last accepted submission (None: none accepted)."""

    task_id: str
    status: ExitStatus
    detail: str
    patch: str | None
    final_diff: str
    turns: int
    context_tokens: int
    completion_tokens: int
    elapsed: float
    trajectory: Path


def size_thread_pool(concurrent_tasks: int) -> None:
    """Give the running event loop enough threads for `concurrent_tasks` episodes at once.

    Every sandbox call runs in a thread (`asyncio.to_thread`); the default pool has
    min(32, cores + 4) threads, which on a 2-core host would queue 64 rollouts' commands behind
    six threads. Call it from the coroutine that starts the episodes.
    """
    workers = 2 * max(1, concurrent_tasks) + 4
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cwm-sandbox")
    asyncio.get_running_loop().set_default_executor(executor)


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
    """Make the task's repository ready at `sandbox.workdir`; returns the base commit.

    `checkout`: the host checkout of `task.repo_source` and its commit, when the task has one.
    """
    if checkout is not None:
        copy_checkout_in(sandbox, checkout[0], sandbox.workdir)
        base = checkout[1]
    else:
        base = task.base_commit or head_commit(sandbox, sandbox.workdir)
    if task.scrub_history:
        scrub_git_history(sandbox, base, sandbox.workdir)
    return base


@contextlib.asynccontextmanager
async def _host_checkout(task: Task) -> AsyncIterator[tuple[Path, str] | None]:
    """A clean host clone of `task.repo_source` at its base commit and that commit's sha, removed
    on exit; None when the image already has the repository."""
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
    model: ModelClient,
    trajectory_path: Path,
    run_id: str | None = None,
) -> RunOutcome:
    """Run one episode of `task`; always writes the trajectory and always removes the sandbox.

    A `task.repo_source` that cannot be checked out raises `RepoError` before anything else
    happens (no container, no trajectory file): it is the caller's mistake to report.
    """
    started = time.monotonic()
    async with _host_checkout(task) as checkout:
        return await _run_episode(
            task, config, model, trajectory_path, run_id or uuid.uuid4().hex[:12], checkout, started
        )


async def _run_episode(
    task: Task,
    config: RunConfig,
    model: ModelClient,
    trajectory_path: Path,
    run_id: str,
    checkout: tuple[Path, str] | None,
    started: float,
) -> RunOutcome:
    writer = TrajectoryWriter(trajectory_path)
    sandbox = _sandbox_for(task, config, run_id)
    base_commit = ""
    status, detail, submission, diff = ExitStatus.SANDBOX_ERROR, "", None, ""
    turns = context_tokens = completion_tokens = 0
    try:
        statement, _ = await cut_to_tokens(
            model, defuse_special_tokens(task.problem_statement), config.agent.issue_max_tokens, keep="right"
        )
        # The repository is at the sandbox's work directory: task.repo_dir in a container, a
        # temporary directory standing in for it with the local backend.
        make_prompt = test_generation_prompt if task.kind == "test" else issue_prompt
        user_prompt = make_prompt(statement, repo_root=sandbox.workdir)
        system = system_prompt(
            session_timeout=int(config.sandbox.command_timeout),
            context_size=config.agent.context_size,
            max_turns=config.agent.max_turns,
        )
        writer.write(
            Header(
                run_id=run_id,
                started_at=time.time(),
                versions={
                    "cwm_agent": __version__,
                    "python": platform.python_version(),
                    "model": config.model.model or "",
                },
                task=task.model_dump(mode="json"),
                config=config.model_dump(mode="json"),
                reasoning=config.agent.reasoning,
                system_prompt=system,
                user_prompt=user_prompt,
            )
        )
        await asyncio.to_thread(sandbox.start)
        base_commit = await asyncio.to_thread(_prepare_repo, sandbox, task, checkout)
        tools = ToolContext(
            sandbox=sandbox,
            repo_dir=sandbox.workdir,
            base_commit=base_commit,
            command_timeout=config.sandbox.command_timeout,
            submit_kind="file" if task.kind == "test" else "patch",
        )
        episode = await Agent(config.agent, config.sampling, model, tools, writer).run(system, user_prompt)
        status, detail, submission = episode.status, episode.detail, episode.submission
        turns, context_tokens, completion_tokens = episode.turns, episode.context_tokens, episode.completion_tokens
        try:
            diff = await asyncio.to_thread(working_tree_diff, sandbox, sandbox.workdir, base_commit)
        except SandboxError as exc:
            # The episode's own ending (and an accepted patch) stands; say what is missing.
            detail = f"{detail}; " if detail else ""
            detail += f"the final diff could not be taken: {exc}"
    except (asyncio.CancelledError, KeyboardInterrupt):
        status, detail = ExitStatus.INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)"
        raise
    except ModelError as exc:
        status, detail = ExitStatus.MODEL_ERROR, str(exc)
    except SandboxError as exc:
        status, detail = ExitStatus.SANDBOX_ERROR, str(exc)
    finally:
        result = Result(
            exit_status=status,
            detail=detail,
            submission=submission,
            final_diff=diff,
            base_commit=base_commit,
            turns=turns,
            context_tokens=context_tokens,
            completion_tokens=completion_tokens,
            elapsed=time.monotonic() - started,
        )
        writer.write(result)
        writer.close()
        # Off the event loop (other rollouts keep talking to the model), and shielded so that
        # a second cancellation cannot leave the container behind.
        await asyncio.shield(asyncio.to_thread(sandbox.close))
    return RunOutcome(
        task_id=task.task_id,
        status=status,
        detail=detail,
        patch=submission,
        final_diff=diff,
        turns=turns,
        context_tokens=context_tokens,
        completion_tokens=completion_tokens,
        elapsed=result.elapsed,
        trajectory=trajectory_path,
    )
