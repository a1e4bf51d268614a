"""The Ray executor on a real local cluster: a head and a worker node started with `ray start` on
127.0.0.1 as separate processes (each with 2 sandbox slots), real Docker, the scripted model over
real HTTP.

A batch on Ray ends with the same run folder as the same batch run locally; its instances evaluate
the same; a node without a Docker engine gets no work; a worker node killed mid-run (all its
processes at once, as a crashed host) has its work finished on the other node, with no duplicate
lines, and `sandbox prune --dead-only` removes what its sandboxes left.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gold_policy import ASSISTANT_HEADER, GoldPolicy

from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.sandbox.base import RUN_ID_LABEL
from cwm_agent.swebench.local import INSTANCES_FILE

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cwm-agent[ray]')")

# Every test here starts a local Ray cluster whose nodes are censused for their Docker engine and images.
pytestmark = pytest.mark.docker

from cwm_agent.benchmarks.ray_overhead import RAY_ENV, LocalCluster  # noqa: E402
from cwm_agent.runs.executor import LocalExecutor, RayExecutor, map_items  # noqa: E402

SLOTS = 2


def cli() -> list[str]:
    script = Path(sys.executable).parent / "cwm-agent"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cwm_agent.cli import app; app()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(slots=SLOTS)
    try:
        c.start(workers=1)
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()


# -- the executor on its own --------------------------------------------------------------------


async def idle_rollout(item: int, place) -> tuple[int, str, int]:
    """A work item that only takes a model endpoint for a moment and writes a file."""
    index = await place.router.acquire(f"r{item}")
    place.router.started(index, f"r{item}")
    await asyncio.sleep(0.5)
    place.router.finished(index, f"r{item}")
    place.router.release(f"r{item}")
    (place.out_dir / "items").mkdir(parents=True, exist_ok=True)
    (place.out_dir / "items" / f"{item}.txt").write_text(f"item {item}\n")
    return item, place.node, index


def as_is(item, place):
    return place


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def run_items(executor, out: Path, n: int) -> tuple[list[tuple[int, str, int]], dict | None]:
    """Items 0..n-1 through `executor` (2 model endpoints); their results and the router's final counts."""

    async def main():
        got = []
        await executor.open(out, endpoints=2)
        try:
            await map_items(executor, list(range(n)), idle_rollout, as_is, lambda i, r: got.append(r), key=str,
                            workers=executor.capacity or 4)  # fmt: skip
            table = executor.table() if isinstance(executor, RayExecutor) else executor.router.table.snapshot()
        finally:
            await executor.close()
        return got, table

    return asyncio.run(main())


def test_items_spread_over_the_nodes_and_their_files_come_back(cluster, tmp_path):
    executor = RayExecutor(cluster.address)
    executor.connect()
    assert executor.capacity is None
    run_items(executor, tmp_path / "warm-up", 2 * SLOTS)  # the nodes start their worker processes
    got, table = run_items(executor, tmp_path, 12)
    assert executor.capacity == 2 * SLOTS
    assert sorted(r[0] for r in got) == list(range(12))
    assert sorted(p.name for p in (tmp_path / "items").iterdir()) == sorted(f"{i}.txt" for i in range(12))
    assert len({node for _, node, _ in got}) == 2, "one node did all the work"
    # one router for the workers of both nodes: every rollout counted there, spread while they overlap
    assert sum(table["assigned"]) == 12 and table["outstanding"] == [0, 0] and table["rollouts"] == [0, 0]
    assert min(table["assigned"]) >= 3, table

    local, table = run_items(LocalExecutor(), tmp_path / "local", 12)
    assert sorted(r[0] for r in local) == list(range(12)) and {node for _, node, _ in local} == {"local"}
    assert table["assigned"] == [6, 6]


def reporting_item(folder: str, place) -> bool:
    """Reports three events and after each waits (at most 30 s) until the driver says it heard it:
    True when it heard every one while still running."""
    heard_all = True
    for event in range(3):
        place.report(event)
        flag = Path(folder) / f"heard-{event}"
        deadline = time.monotonic() + 30
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        heard_all = heard_all and flag.exists()
    return heard_all


def progress_of_one_item(executor, folder: Path) -> tuple[bool, list[int]]:
    """`reporting_item` through `executor`: whether it heard back each event while running, and the
    events the driver heard."""
    folder.mkdir()
    got: list[int] = []

    def heard(event: int) -> None:
        got.append(event)
        (folder / f"heard-{event}").touch()

    async def main() -> bool:
        await executor.open(folder)
        try:
            return await executor.submit(str(folder), reporting_item, as_is, key="item", on_event=heard)
        finally:
            await executor.close()

    return asyncio.run(main()), got


def test_an_items_progress_reaches_the_driver_while_it_runs(cluster, tmp_path):
    ray_executor = RayExecutor(cluster.address)
    ray_executor.connect()
    for executor in (ray_executor, LocalExecutor()):
        while_running, got = progress_of_one_item(executor, tmp_path / executor.name)
        assert while_running, f"{executor.name}: an event reached the driver only with the result"
        assert got == [0, 1, 2], executor.name


def test_a_node_without_docker_gets_no_work(cluster, tmp_path):
    blind = cluster.add_worker(env={**RAY_ENV, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    try:
        cluster.wait_nodes(3)
        executor = RayExecutor(cluster.address)
        executor.connect()
        got, _ = run_items(executor, tmp_path, 10)
        assert len(executor.nodes) == 2  # the census left it out
        assert {node for _, node, _ in got} <= set(executor.nodes)
        assert len(got) == 10
    finally:
        cluster.stop_node(blind)


def test_an_item_goes_only_to_nodes_that_have_its_image():
    """The placement rule over what the census found (one Docker engine on this host cannot show two
    nodes with different images, so the rule is checked on its own here)."""
    from cwm_agent.runs.executor import _Node

    executor = RayExecutor()
    executor.nodes = {"a": _Node("a", 2, {"img-x"}), "b": _Node("b", 2, {"img-x", "img-y"})}
    executor._slot_nodes = 2
    assert executor._pin(["img-y"]).node_id == "b"  # only b has it
    assert executor._pin(["img-x"]) is None  # every node has it: Ray places it
    assert executor._pin(None) is None
    assert executor._pin(["img-z"]) is None  # no node has it: anywhere (an image_error there, as locally)
    executor.nodes["b"].in_flight = 2
    executor.nodes["c"] = _Node("c", 4, {"img-y"})
    executor._slot_nodes = 3
    assert executor._pin(["img-y"]).node_id == "c"  # the least loaded per slot of those with it
    executor._slot_nodes = 4  # a fourth node with slots but no engine: nothing may be left to Ray
    assert executor._pin(None).node_id in {"a", "c"} and executor._pin(["img-x"]).node_id == "a"


# -- swebench run and eval ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gold(local_images):
    policy = GoldPolicy(local_images)
    with ScriptedServer(policy=policy) as a, ScriptedServer(policy=policy) as b:
        yield a, b


def swebench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([*cli(), "swebench", *args], capture_output=True, text=True, env=RAY_ENV, timeout=timeout)
    return proc


def comparable(run_dir: Path) -> list[dict]:
    """results.jsonl without what depends on timing: seconds, the server a rollout was routed to, and
    the prefix-cache hits (which depend on what that server saw before)."""
    rows = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in ("elapsed", "model_seconds", "tool_seconds", "endpoint"):
            row.pop(key)
        row["tokens"].pop("cached")
        rows.append(row)
    return rows


def run_containers(run_dir: Path) -> list[str]:
    run_ids = json.loads((run_dir / "run.json").read_text())["run_ids"]
    names = []
    for run_id in run_ids:
        names += subprocess.run(["docker", "ps", "-aq", "--filter", f"label={RUN_ID_LABEL}={run_id}"],
                                capture_output=True, text=True).stdout.split()  # fmt: skip
    return names


@pytest.mark.docker
def test_a_batch_on_ray_writes_the_same_run_folder_as_locally_and_evaluates_the_same(cluster, gold, tmp_path):
    a, b = gold
    common = ["--dataset", str(INSTANCES_FILE), "--rollouts", "2", "--model-url", a.url, "--model-url", b.url]
    local = swebench("run", *common, "--output", str(tmp_path / "local"), "-w", "4")
    assert local.returncode == 0, local.stderr
    before = len(a.generation_requests()), len(b.generation_requests())
    remote = swebench("run", *common, "--output", str(tmp_path / "ray"), "--executor", "ray",
                      "--ray-address", cluster.address, "--status-every", "0.5")  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert "6/6 work items done" in remote.stdout
    # The remote episodes' turns reached the display as they happened: tokens counted before the end.
    processed = [int(n.replace(",", "")) for n in re.findall(r"tokens: ([\d,]+) processed", remote.stderr)]
    assert processed and max(processed) > 0, remote.stderr

    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")
    for name in ("preds.jsonl", "preds/rollout-1.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    trajectories = sorted(p.name for p in (tmp_path / "ray" / "trajectories").iterdir())
    assert trajectories == sorted(p.name for p in (tmp_path / "local" / "trajectories").iterdir())
    assert len(trajectories) == 6
    # both servers served the Ray run's rollouts, and each rollout stayed on its server
    for run in ("local", "ray"):
        served = [json.loads(line)["endpoint"] for line in (tmp_path / run / "results.jsonl").read_text().splitlines()]
        assert set(served) == {a.url, b.url}, (run, served)
    assert len(a.generation_requests()) > before[0] and len(b.generation_requests()) > before[1]
    assert run_containers(tmp_path / "ray") == []

    evaluated = swebench("eval", "--predictions", str(tmp_path / "ray" / "preds.jsonl"), "--dataset",
                         str(INSTANCES_FILE), "--output", str(tmp_path / "ray" / "eval"), "--executor", "ray",
                         "--ray-address", cluster.address)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "ray" / "eval" / "report.json").read_text())
    assert report["resolved_instances"] == 3, report
    for instance in ("cwm-local__inflection-1", "cwm-local__six-1", "cwm-local__more-itertools-1"):
        files = {p.name for p in (tmp_path / "ray" / "eval" / instance).iterdir()}
        assert {"report.json", "result.json", "test_output.txt", "patch.diff", "eval.sh"} <= files


def test_a_cluster_that_is_not_there_is_one_line(tmp_path):
    out = tmp_path / "run"
    nowhere = f"127.0.0.1:{free_port()}"
    proc = swebench("run", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--executor", "ray",
                    "--ray-address", nowhere, "--model-url", "http://127.0.0.1:9/v1", timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no Ray cluster answers at 127.0.0.1:")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    proc = swebench("eval", "--gold", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--ray-address", "x:1")
    assert proc.returncode == 2 and "--ray-address goes with --executor ray" in proc.stderr


def episodes_started(*servers: ScriptedServer) -> int:
    """First turns the servers answered: one per episode started (again, after a loss)."""
    prompts = [r.prompt or "" for s in servers for r in s.generation_requests()]
    return sum(1 for prompt in prompts if prompt.count(ASSISTANT_HEADER) == 1)


@pytest.mark.docker
def test_a_killed_driver_leaves_a_run_that_resumes_on_ray(cluster, gold, tmp_path):
    a, b = gold
    out = tmp_path / "run"
    args = [*cli(), "swebench", "run", "--dataset", str(INSTANCES_FILE), "--rollouts", "2", "--output", str(out),
            "--model-url", a.url, "--model-url", b.url, "--executor", "ray",
            "--ray-address", cluster.address]  # fmt: skip
    a.latency = b.latency = 0.5
    try:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=RAY_ENV)
        results = out / "results.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(3)  # Ray ends the dead driver's tasks
    finally:
        a.latency = b.latency = 0.0
    done_before = {json.loads(line)["item_id"] for line in results.read_text().splitlines() if line.strip()}
    assert 2 <= len(done_before) < 6
    started = episodes_started(a, b)

    again = subprocess.run(args, capture_output=True, text=True, env=RAY_ENV, timeout=240)
    assert again.returncode == 0, again.stderr
    assert episodes_started(a, b) - started == 6 - len(done_before)  # finished items are not run again
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 6 and len({r["item_id"] for r in rows}) == 6
    assert {r["status"] for r in rows} == {"submitted"}
    assert len((out / "preds.jsonl").read_text().splitlines()) == 3
    first_run = json.loads((out / "run.json").read_text())["run_ids"][0]
    subprocess.run([*cli(), "sandbox", "prune", "--run-id", first_run, "--dead-only"], capture_output=True, env=RAY_ENV)
    assert run_containers(out) == []


@pytest.mark.docker
def test_task_collection_runs_and_evaluates_on_ray(cluster, local_images, tmp_path):
    """`forage run --executor ray`: episodes and evaluations in the per-task images `forage tasks` built."""
    from forage_tasks import generated

    from cwm_agent.swebench.dataset import load_instances

    # A generation of its own (~6 s): another session's forage tests remove theirs when they end.
    tasks_file, _ = generated(2, 29)
    tasks = load_instances(tasks_file)
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t.as_dict()) + "\n" for t in tasks))
    out = tmp_path / "run"
    with ScriptedServer(policy=GoldPolicy(tasks)) as server:
        proc = subprocess.run(
            [*cli(), "forage", "run", "--tasks", str(path), "--output", str(out), "--model-url", server.url,
             "--executor", "ray", "--ray-address", cluster.address],
            capture_output=True, text=True, env=RAY_ENV, timeout=600,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["status"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())} == {"submitted"}
    assert json.loads((out / "forage.json").read_text())["outcomes"] == {"resolved": 2}


@pytest.mark.docker
def test_a_worker_node_lost_mid_run_has_its_work_finished_on_the_other(cluster, gold, tmp_path):
    """Last in the module: the worker node does not come back."""
    a, b = gold
    a.latency = b.latency = 0.8  # an episode takes a few seconds, so the kill lands mid-episode
    out = tmp_path / "run"
    try:
        proc = subprocess.Popen(
            [*cli(), "swebench", "run", "--dataset", str(INSTANCES_FILE), "--rollouts", "2", "--output", str(out),
             "--model-url", a.url, "--model-url", b.url, "--executor", "ray", "--ray-address", cluster.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=RAY_ENV,
        )  # fmt: skip

        deadline = time.monotonic() + 120
        while episodes_started(a, b) < 2 * SLOTS and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert episodes_started(a, b) >= 2 * SLOTS, "the run never had both nodes busy"
        time.sleep(1.0)
        cluster.stop_node(cluster.nodes[1])  # the worker node, all its processes at once
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        a.latency = b.latency = 0.0
    assert proc.returncode == 0, stderr
    assert episodes_started(a, b) > 6, "no episode of the lost node was run again"
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ids = [row["item_id"] for row in lines]
    assert len(ids) == 6 and len(set(ids)) == 6, ids
    assert {row["status"] for row in lines} == {"submitted"}
    assert len(list((out / "trajectories").iterdir())) == 6
    assert len((out / "preds.jsonl").read_text().splitlines()) == 3
    # what the lost node's sandboxes left is removed by the documented command
    run_id = json.loads((out / "run.json").read_text())["run_ids"][0]
    prune = [*cli(), "sandbox", "prune", "--run-id", run_id, "--dead-only"]
    subprocess.run(prune, capture_output=True, text=True, env=RAY_ENV)
    assert run_containers(out) == []
