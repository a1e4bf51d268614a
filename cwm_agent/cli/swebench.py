"""`cwm-agent swebench ...`: evaluate predictions, build the local instance images, show eval scripts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cwm_agent.cli.common import UsageError, make_output_dir, split_ids
from cwm_agent.cli.console import err
from cwm_agent.cli.console import user_error as _fail

out = Console()


def eval_command(
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="Dataset: .jsonl/.json/.parquet file, or a Hugging Face id."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for per-instance logs and reports."),
    predictions: Optional[Path] = typer.Option(
        None,
        "--predictions",
        "-p",
        help="Predictions file (official format: instance_id, model_name_or_path, model_patch).",
    ),
    gold: bool = typer.Option(False, "--gold", help="Evaluate the dataset's own patches instead of predictions."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Instances evaluated in parallel."),
    instance_ids: Optional[List[str]] = typer.Option(
        None, "--instance-ids", help="Only these instances (repeat, or comma-separated)."
    ),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="Seconds the tests of one instance may run."),
    network: str = typer.Option("none", "--network", help="Network of the eval containers: none or host."),
    pip_index: Optional[bool] = typer.Option(
        None,
        "--pip-index/--no-pip-index",
        help="Let pip use a package index in eval containers (default: not with --network none).",
    ),
    allow_pull: bool = typer.Option(False, "--allow-pull", help="Pull missing images from a registry."),
    registry_prefix: Optional[str] = typer.Option(
        None, "--registry-prefix", help="Registry mirror for official images (with --allow-pull)."
    ),
    rerun: bool = typer.Option(False, "--rerun", help="Evaluate again instances already done in OUTPUT."),
    split: str = typer.Option("test", "--split", help="Split, for Hugging Face datasets."),
    executor_name: str = typer.Option(
        "local", "--executor", help="Where instances run: local (this host, -w at once) or ray (a Ray cluster)."
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="The Ray cluster's address HOST:PORT (default: the one this host belongs to)."
    ),
) -> None:
    """Evaluate patches: a fresh container per prediction, the official eval script, parsers and grading."""
    from cwm_agent.runs.executor import make_executor
    from cwm_agent.sandbox import cleanup
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.swebench.dataset import DatasetError, load_instances, load_predictions
    from cwm_agent.swebench.evaluate import EvalOptions, evaluate_predictions, gold_predictions

    executor = make_executor(executor_name, ray_address)

    if network not in ("none", "host"):
        raise _fail(f"--network {network}: use none or host.")
    if gold == (predictions is not None):
        raise _fail("pass either --predictions FILE or --gold (not both, not neither).")
    try:
        instances = load_instances(dataset, instance_ids=split_ids(instance_ids), split=split)
        preds = gold_predictions(instances) if gold else load_predictions(predictions)
    except DatasetError as exc:
        raise _fail(str(exc)) from None
    known = {i.instance_id for i in instances}
    unknown = [p.instance_id for p in preds if p.instance_id not in known]
    if unknown and not instance_ids:
        err.print(
            f"[yellow]warning:[/yellow] {len(unknown)} predictions are not in {dataset} and are skipped: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    preds = [p for p in preds if p.instance_id in known]
    if not preds:
        raise _fail(f"no prediction matches an instance of {dataset}.")
    make_output_dir(output, "--output")

    options = EvalOptions(
        timeout=timeout,
        network=network,
        pip_no_index=None if pip_index is None else not pip_index,
        allow_pull=allow_pull,
        registry_prefix=registry_prefix,
        rerun=rerun,
    )
    done = 0

    def progress(result) -> None:
        nonlocal done
        done += 1
        colour = {"resolved": "green", "unresolved": "yellow", "empty_patch": "yellow"}.get(result.outcome, "red")
        detail = f"  {escape(result.error.splitlines()[0])}" if result.error else ""
        how = "reused" if result.reused else f"{result.total_s:.1f} s"
        err.print(
            f"[{done}/{len(preds)}] {result.instance_id}: [{colour}]{result.outcome}[/{colour}] ({how}){detail}",
            highlight=False,
            soft_wrap=True,
        )

    err.print(f"run id {options.run_id}: {len(preds)} predictions -> {output}", highlight=False, soft_wrap=True)
    # Sandboxes start in worker threads, where no signal handler can be installed: install them here,
    # so SIGINT, SIGTERM and SIGHUP remove every running container at once.
    cleanup.install_handlers()
    with cleanup.sigterm_as_interrupt() as received:
        try:
            summary, _ = evaluate_predictions(
                instances, preds, output, workers, options, on_result=progress, executor=executor
            )
        except SandboxError as exc:
            cleanup.sweep_run(options.run_id)
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            cleanup.sweep_run(options.run_id)
            how = "terminated" if received else "interrupted"
            err.print(
                f"{how} (run id {options.run_id}): containers removed; {done} of {len(preds)} instances finished "
                f"and are kept in {output} (run again to continue).",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(cleanup.exit_code(received[0] if received else None)) from None
    _print_summary(summary, output)


def _print_summary(summary: dict, output: Path) -> None:
    from rich.table import Table

    table = Table(title="SWE-bench evaluation", show_header=True)
    table.add_column("instances")
    table.add_column("count", justify="right")
    submitted = summary["submitted_instances"] or 1
    for label, key in [
        ("submitted", "submitted_instances"),
        ("resolved", "resolved_instances"),
        ("unresolved", "unresolved_instances"),
        ("empty patch", "empty_patch_instances"),
        ("error", "error_instances"),
    ]:
        table.add_row(label, str(summary[key]))
    out.print(table)
    resolved, total = summary["resolved_instances"], summary["total_instances"]
    out.print(
        f"resolved {resolved}/{total} of the dataset ({100 * resolved / (total or 1):.1f}%), "
        f"{resolved}/{summary['submitted_instances']} of the submitted ({100 * resolved / submitted:.1f}%); "
        f"{summary.get('evaluated_now', 0)} evaluated, {summary.get('reused', 0)} reused "
        f"(run id {summary.get('run_id', '?')}); report: {output / 'report.json'}",
        highlight=False,
        soft_wrap=True,
    )


def build_local(
    trust_host_ca: bool = typer.Option(False, "--trust-host-ca", help="Trust this host's CA bundle in image builds."),
    force: bool = typer.Option(False, "--force", help="Rebuild images that exist."),
) -> None:
    """Build the images of the local instance set (sdists from PyPI, on this host). Fast when present."""
    from cwm_agent.sandbox.base import SandboxError
    from cwm_agent.sandbox.images import BuildOptions
    from cwm_agent.swebench.local.build import build_local_images

    try:
        done = build_local_images(BuildOptions(trust_host_ca=trust_host_ca), force=force)
    except SandboxError as exc:
        raise _fail(str(exc)) from None
    for name, built in done:
        typer.echo(f"{name}: {'built' if built else 'already present'}")


def local_dataset() -> None:
    """Print the path of the local instance set (use it as --dataset)."""
    from cwm_agent.swebench.local import INSTANCES_FILE

    typer.echo(str(INSTANCES_FILE))


def eval_script(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset file or Hugging Face id."),
    instance_id: str = typer.Argument(..., help="The instance."),
) -> None:
    """Print the eval script of one instance (built offline) and the image it runs in."""
    from cwm_agent.swebench.dataset import DatasetError, load_instances
    from cwm_agent.swebench.images import candidate_images
    from cwm_agent.swebench.spec import SpecError, make_eval_spec

    try:
        (instance,) = load_instances(dataset, instance_ids=[instance_id])
        spec = make_eval_spec(instance)
    except (DatasetError, SpecError) as exc:
        raise _fail(str(exc)) from None
    err.print(f"# images, in the order tried: {', '.join(candidate_images(instance))}; log parser: {spec.log_parser}")
    typer.echo(spec.eval_script, nl=False)


def replay_gold(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset file or Hugging Face id (its gold patches)."),
    port: int = typer.Option(8000, "--port", help="Port to serve on (127.0.0.1)."),
    split: str = typer.Option("test", "--split", help="Split, for Hugging Face datasets."),
) -> None:
    """Serve a REPLAYED model (not CWM) that submits each instance's gold patch: `swebench run` without a GPU."""
    import signal
    import threading

    from cwm_agent.demo.gold import MODEL_NAME, GoldPolicy  # inside: CLI start-up time
    from cwm_agent.model.scripted_server import ScriptedServer
    from cwm_agent.swebench.dataset import load_instances

    instances = load_instances(dataset, split=split)
    server = ScriptedServer(policy=GoldPolicy(instances), port=port, model=MODEL_NAME)
    try:
        server.start()
    except OSError as exc:
        raise UsageError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    err.print(
        f"REPLAYED MODEL (gold patches of {len(instances)} instances, not CWM) at {server.url}; Ctrl-C stops it",
        highlight=False,
        soft_wrap=True,
    )
    while not stop.wait(0.5):
        pass
    server.stop()
