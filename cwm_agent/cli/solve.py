"""`cwm-agent solve`, `demo`, `show` and `config`."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cwm_agent.cli.common import RELEASE_HELP, SET_HELP, make_output_dir, run_config
from cwm_agent.cli.console import err
from cwm_agent.cli.console import user_error as _fail

# soft_wrap: long lines (errors, paths, commands to copy) are never broken by inserted newlines.
out = Console(soft_wrap=True)


def _read_issue(issue: str) -> str:
    if issue.startswith("@"):
        path = Path(issue[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise _fail(f"--issue {issue}: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise _fail(
                f"--issue {issue}: {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                f"{exc.start}); save it as UTF-8"
            ) from None
    else:
        text = issue
    if not text.strip():
        raise _fail("--issue is empty: pass the issue text, or @FILE to read it from a file")
    return text


def files_changed(diff: str) -> list[str]:
    return re.findall(r"^diff --git a/(\S+) b/", diff, flags=re.MULTILINE)


def print_summary(outcome, output_dir: Path) -> None:
    """The few lines a user reads after a run."""

    colour = "green" if outcome.graded else ("yellow" if outcome.submission else "red")
    out.print(
        f"[bold]status[/bold]      [{colour}]{outcome.status.value}[/{colour}] {escape(outcome.detail)}",
        highlight=False,
    )
    out.print(f"[bold]turns[/bold]       {outcome.turns}")
    tokens = outcome.tokens
    cached = f", {tokens.cached} cached" if tokens.cached is not None else ""
    out.print(
        f"[bold]tokens[/bold]      {tokens.context} in context, {tokens.prompt} processed{cached}, "
        f"{tokens.completion} generated"
    )
    out.print(
        f"[bold]time[/bold]        {outcome.elapsed:.1f} s (model {outcome.model_seconds:.1f} s, "
        f"tools {outcome.tool_seconds:.1f} s)"
    )
    changed = files_changed(outcome.submission or "") or files_changed(outcome.final_diff)
    out.print(f"[bold]files[/bold]       {escape(', '.join(changed)) if changed else '(none)'}")
    if outcome.submission and not outcome.graded:
        out.print(
            f"[bold]patch[/bold]       {output_dir / 'patch.diff'} "
            "(unfinished: CWM counts this episode as failed and would not grade it)"
        )
    elif outcome.submission:
        out.print(f"[bold]patch[/bold]       {output_dir / 'patch.diff'}")
    else:
        out.print("[bold]patch[/bold]       none accepted (the working tree's changes are in working_tree.diff)")
    out.print(f"[bold]trajectory[/bold]  {outcome.trajectory}")


def write_outputs(outcome, output_dir: Path) -> None:
    from cwm_agent.agent.files import write_text_atomic

    write_text_atomic(output_dir / "working_tree.diff", outcome.final_diff)
    if outcome.submission:
        write_text_atomic(output_dir / "patch.diff", outcome.submission)
    else:  # a patch.diff left by an earlier run into the same directory is not this run's
        (output_dir / "patch.diff").unlink(missing_ok=True)


def turn_line(turn, width: int = 100) -> str:
    """One line per turn for `solve`'s stream: number, tool, a short form of the call, seconds, tokens."""
    seconds = turn.model_seconds + turn.tool_seconds
    tokens = turn.tokens
    cost = f"{seconds:5.1f}s  {tokens.prompt:,} in / {tokens.completion:,} out"
    if turn.action is not None:
        tool = turn.action.tool
        body = " ".join(turn.action.body.split())
    elif turn.format_error:
        tool, body = "-", f"(format error) {turn.format_error.splitlines()[0] if turn.format_error else ''}"
    else:
        tool, body = "-", "(final reply)"
    head = f"turn {turn.index:>3}  {tool:<7} "
    room = max(10, width - len(head) - len(cost) - 2)
    if len(body) > room:
        body = body[: room - 1] + "…"
    return f"{head}{body:<{room}}  {cost}"


async def _solve(task, config, output_dir: Path, run_id: str | None = None, on_turn=None):
    from cwm_agent.agent.run import run_task
    from cwm_agent.model.client import ModelClient

    async with ModelClient(config.model) as model:
        model_id = await model.check()
        config.model.model = config.model.model or model_id
        return await run_task(task, config, model, output_dir / "trajectory.jsonl", run_id=run_id, on_turn=on_turn)


def solve(
    repo: str = typer.Option(..., "--repo", help="Repository: a local git checkout or a git URL."),
    issue: str = typer.Option(..., "--issue", help="The issue text, or @FILE to read it from a file."),
    commit: Optional[str] = typer.Option(
        None, "--commit", help="Revision to start from (default: the repository's HEAD)."
    ),
    image: Optional[str] = typer.Option(None, "--image", help="Sandbox image (default: cwm-agent/base:bookworm)."),
    model_url: Optional[str] = typer.Option(
        None, "--model-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."
    ),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML config (see `cwm-agent config`)."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output directory (default: runs/solve-TIMESTAMP)."
    ),
    max_turns: Optional[int] = typer.Option(None, "--max-turns", help="Override agent.max_turns."),
    sandbox: Optional[str] = typer.Option(None, "--sandbox", help="docker (default) or local (no isolation!)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty output directory."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Don't stream the turns as they happen."),
    cwm_release: Optional[Path] = typer.Option(None, "--cwm-release", help=RELEASE_HELP),
    set_options: Optional[List[str]] = typer.Option(None, "-c", "--set", help=SET_HELP),
) -> None:
    """Solve an issue in a repository: writes DIR/patch.diff and DIR/trajectory.jsonl; streams each turn."""
    from cwm_agent.agent.repo import RepoError
    from cwm_agent.agent.task import Task
    from cwm_agent.model.client import ModelError
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.sandbox.cleanup import signal_exit_code, sigterm_as_interrupt, sweep_run

    problem = _read_issue(issue)
    flags = {
        "model": {"url": model_url} if model_url else {},
        "agent": {"max_turns": max_turns} if max_turns is not None else {},
        "sandbox": {"backend": sandbox} if sandbox else {},
    }
    config = run_config(config_file, set_options, cwm_release, flags)
    # Not made here: the trajectory writer makes it, so a mistake found first leaves no empty directory.
    output_dir = output or Path("runs") / time.strftime("solve-%Y%m%d-%H%M%S")
    if output_dir.exists() and not output_dir.is_dir():
        raise _fail(f"-o {output_dir} is a file; pass a directory.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise _fail(f"-o {output_dir} is not empty (an earlier run's files?); pass another directory, or --overwrite.")
    task = Task(task_id=output_dir.name, problem_statement=problem, image=image, repo_source=repo, base_commit=commit)
    run_id = uuid.uuid4().hex[:12]

    def stream(turn) -> None:  # noqa: ANN001 - an agent.trajectory.Turn
        if turn.index == 1:  # once the episode runs (a mistake found before it stays one line)
            err.print(f"run id {run_id}: trajectory {escape(str(output_dir / 'trajectory.jsonl'))}", highlight=False)
        width = err.size.width if err.is_terminal else 160  # a log keeps more of each call
        err.print(escape(turn_line(turn, max(80, width))), highlight=False, soft_wrap=True)

    with sigterm_as_interrupt() as terminated:
        try:
            outcome = asyncio.run(_solve(task, config, output_dir, run_id, None if quiet else stream))
        except KeyboardInterrupt:
            sweep_run(run_id)
            err.print(
                f"interrupted (run id {run_id}): the container was removed; the partial trajectory is in "
                f"{output_dir / 'trajectory.jsonl'}"
            )
            raise typer.Exit(signal_exit_code(terminated[0] if terminated else None)) from None
        except (RepoError, SandboxError, ModelError) as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:  # e.g. the output directory cannot be written (permissions, a full disk)
            where = f"cannot write {exc.filename}: " if exc.filename else ""
            raise _fail(f"{where}{exc.strerror or exc}") from None
    from cwm_agent.agent.trajectory import ExitStatus

    if outcome.status is ExitStatus.SANDBOX_ERROR and outcome.turns == 0:
        # The sandbox could not even be set up (a missing image, no Docker): a setup problem to fix, not a result.
        raise _fail(f"{outcome.detail} (nothing ran; the record is in {outcome.trajectory})")
    write_outputs(outcome, output_dir)
    print_summary(outcome, output_dir)
    out.print(f"[bold]run id[/bold]      {run_id}")
    raise typer.Exit(0 if outcome.graded else 1)


REPLAY_BANNER = (
    "[bold yellow]REPLAYED MODEL[/bold yellow]: no model is running. A scripted server replays recorded CWM-format "
    "replies over real HTTP; everything else (sandbox, tools, patch, evaluation) is real."
)


def demo(
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output directory (default: runs/demo-TIMESTAMP)."
    ),
) -> None:
    """Run the whole pipeline on the bundled demo task with a replayed model (no GPU needed)."""
    from cwm_agent.agent.config import load_config
    from cwm_agent.demo import build_demo_image, demo_image, demo_instance, demo_replies
    from cwm_agent.model.client import ModelError
    from cwm_agent.model.scripted_server import ScriptedServer
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.swebench.evaluate import evaluate_instance
    from cwm_agent.swebench.tasks import instance_task

    output_dir = output or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    make_output_dir(output_dir, "-o")
    try:
        out.print("preparing the demo image (first time: a few seconds) ...")
        instance = demo_instance(build_demo_image())
        out.print(REPLAY_BANNER)
        out.print(
            f"[bold]task[/bold]        {instance.instance_id}: {escape(instance.problem_statement.splitlines()[0])}"
        )
        with ScriptedServer(replies=demo_replies(), model="cwm-replay (scripted, not CWM)") as server:
            config = load_config(None, {"model": {"url": server.url}})
            task = instance_task(instance, demo_image())
            outcome = asyncio.run(_solve(task, config, output_dir))
        write_outputs(outcome, output_dir)
        print_summary(outcome, output_dir)
        out.print("evaluating the patch in a fresh container with the hidden tests ...")
        result = evaluate_instance(instance, outcome.graded_patch, output_dir / "eval")
    except KeyboardInterrupt:
        err.print("interrupted: containers removed")
        raise typer.Exit(130) from None
    except (SandboxError, ModelError) as exc:
        raise _fail(str(exc)) from None
    colour = "green" if result.outcome == "resolved" else "red"
    out.print(
        f"[bold]evaluation[/bold]  [{colour}]{result.outcome}[/{colour}] {escape(result.error)} "
        f"(log: {output_dir / 'eval' / instance.instance_id})"
    )
    raise typer.Exit(0 if result.outcome == "resolved" else 1)


def show_config(
    config_file: Optional[Path] = typer.Argument(None, help="A YAML file to merge over the defaults."),
) -> None:
    """Print the run configuration (defaults: CWM's SWE-bench settings) as YAML."""
    from cwm_agent.agent.config import ConfigError, dump_config, load_config

    try:
        typer.echo(dump_config(load_config(config_file)), nl=False)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
