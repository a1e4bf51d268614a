"""`cwm-agent forage run` and `forage export` end to end: tasks made from inflection, a scripted model over real
HTTP that applies each task's gold patch, real Docker for the episodes and for every rollout's evaluation."""

from __future__ import annotations

import json

import pytest
from forage_tasks import cli, generated, rows
from gold_policy import GoldPolicy

from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.prompts.render import EOT, Message, render_prompt
from cwm_agent.swebench.dataset import load_instances

pytestmark = pytest.mark.docker

COUNT, SEED, ROLLOUTS = 2, 11, 2


@pytest.fixture(scope="module")
def collected(local_images, tmp_path_factory):
    """A finished `forage run` (2 tasks x 2 rollouts) and the scripted server that served it."""
    tasks_file, _ = generated(3, SEED)  # the same generation as test_forager_tasks (made once per session)
    tasks = load_instances(tasks_file)[:COUNT]
    heads = [t.problem_statement.strip()[:200] for t in tasks]
    assert len(set(heads)) == COUNT, "the gold policy tells tasks apart by their issue's beginning"
    path = tmp_path_factory.mktemp("forage-run") / "tasks.jsonl"
    path.write_text("".join(json.dumps(t.as_dict()) + "\n" for t in tasks))
    out = path.parent / "run"
    with ScriptedServer(policy=GoldPolicy(tasks)) as server:
        proc = cli("forage", "run", "--tasks", str(path), "--output", str(out), "-w", "2",
                   "--rollouts", str(ROLLOUTS), "--model-url", server.url, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield tasks, out, server, proc


def test_every_rollout_runs_and_is_evaluated_with_its_tasks_tests(collected):
    tasks, out, _, proc = collected
    results = rows(out / "results.jsonl")
    assert sorted(r["item_id"] for r in results) == sorted(
        [t.instance_id for t in tasks] + [f"{t.instance_id}.patch-1" for t in tasks]
    )
    assert all(r["status"] == "submitted" and r["graded"] for r in results)
    assert (out / "run.json").exists() and (out / "preds" / "rollout-1.jsonl").exists()
    for k, folder in ((0, out / "eval"), (1, out / "eval-rollout-1")):
        for task in tasks:
            result = json.loads((folder / task.instance_id / "result.json").read_text())
            assert result["outcome"] == "resolved", (k, result)
    summary = json.loads((out / "forage.json").read_text())
    assert summary["outcomes"] == {"resolved": COUNT * ROLLOUTS}
    assert f"evaluated {COUNT} tasks x {ROLLOUTS}: resolved {COUNT * ROLLOUTS}" in proc.stdout


def test_a_second_run_resumes_with_nothing_to_do(collected):
    tasks, out, server, _ = collected
    path = out.parent / "tasks.jsonl"
    before = len(server.generation_requests())
    summary = (out / "forage.json").read_text()
    proc = cli("forage", "run", "--tasks", str(path), "--output", str(out), "-w", "2",
               "--rollouts", str(ROLLOUTS), "--model-url", server.url)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(server.generation_requests()) == before  # no episode ran again
    assert (out / "forage.json").read_text() == summary  # nor was anything evaluated differently
    assert "0 to run" in proc.stderr


def test_export_records_render_back_to_exactly_what_the_model_was_sent(collected, tmp_path):
    tasks, out, server, _ = collected
    train = tmp_path / "train.jsonl"
    proc = cli("forage", "export", str(out), "-o", str(train))
    assert proc.returncode == 0, proc.stderr
    assert f"{COUNT * ROLLOUTS} records written to {train}" in proc.stdout
    records = rows(train)
    requests = [r for r in server.generation_requests() if r.reply is not None]
    for record in records:
        assert record["outcome"] == "resolved" and record["repo"] == "cwm-local/inflection"
        assert record["instance_id"] in {t.instance_id for t in tasks}
        roles = [m["role"] for m in record["messages"]]
        assert roles[:4] == ["system", "user", "assistant", "tool: create"]
        assert "tool: bash" in roles and "tool: submit" in roles and roles[-1] == "assistant"
        assert all(m["thinking"] for m in record["messages"] if m["role"] == "assistant")
        assert record["tokens"]["completion"] > 0 and record["tokens"]["context"] > 0
        # The last request of the episode, exactly as the server received it; every earlier one a prefix.
        issue = next(m["content"] for m in record["messages"] if m["role"] == "user")
        sent = [r for r in requests if issue.strip()[:200] in r.prompt]
        last = next(r for r in sent if r.prompt == record["prompt"])
        assert record["text"] == last.prompt + last.reply + EOT
        assert all(record["text"].startswith(r.prompt) for r in sent)
        # and the dialogue renders back to that prompt
        dialogue = [Message(role=m["role"], content=m["content"]) for m in record["messages"][:-1]]
        assert render_prompt(dialogue) == record["prompt"]
        assert record["training_text"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
        assert record["training_text"].endswith("The fix is submitted.<|eot_id|>")


def test_export_drops_near_duplicates_and_says_why(collected, tmp_path):
    tasks, out, _, _ = collected
    train = tmp_path / "dedup.jsonl"
    proc = cli("forage", "export", str(out), "-o", str(train), "--dedup", "--only-resolved")
    assert proc.returncode == 0, proc.stderr
    # The scripted model replays the same episode for both rollouts of a task: one of each pair goes.
    records = rows(train)
    assert sorted(r["instance_id"] for r in records) == sorted(t.instance_id for t in tasks)
    summary = json.loads((tmp_path / "dedup.jsonl.summary.json").read_text())
    assert summary["kept"] == COUNT and summary["dropped_by_reason"] == {"near-duplicate": COUNT}
    for item, reason in summary["dropped_items"].items():
        assert item.endswith(".patch-1") and reason == f"near-duplicate of {item.removesuffix('.patch-1')}"
    assert f"dropped {COUNT} (near-duplicate {COUNT})" in proc.stdout

    small = tmp_path / "small.jsonl"
    proc = cli("forage", "export", str(out), "-o", str(small), "--max-tokens", "10")
    assert proc.returncode == 0 and rows(small) == []
    summary = json.loads((tmp_path / "small.jsonl.summary.json").read_text())
    assert summary["dropped_by_reason"] == {"over --max-tokens": COUNT * ROLLOUTS}


def test_export_of_a_folder_without_trajectories_is_one_line(tmp_path):
    proc = cli("forage", "export", str(tmp_path), "-o", str(tmp_path / "t.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "no trajectories/ folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_export_keeps_the_token_ids_of_a_token_id_run(local_images, tmp_path):
    from cwm_agent.model.tokenizer import TokenizerNotFoundError, cache_path, load_tokenizer

    try:
        tokenizer = load_tokenizer()
    except TokenizerNotFoundError:
        pytest.skip(f"needs Llama 3's tokenizer.model at {cache_path()} (bash scripts/setup.sh --test fetches it)")
    tasks_file, _ = generated(3, SEED)
    task = load_instances(tasks_file)[0]
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(task.as_dict()) + "\n")
    out, train = tmp_path / "run", tmp_path / "train.jsonl"
    with ScriptedServer(policy=GoldPolicy([task]), tokenizer=tokenizer) as server:
        proc = cli("forage", "run", "--tasks", str(path), "--output", str(out), "--model-url", server.url,
                   "-c", "model.tokenizer=cwm", timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        requests = [r for r in server.generation_requests() if r.reply is not None]
    assert cli("forage", "export", str(out), "-o", str(train)).returncode == 0
    (record,) = rows(train)
    last = requests[-1]
    assert last.prompt_ids and last.reply_ids
    assert record["token_ids"] == last.prompt_ids + last.reply_ids  # the whole episode, as the model saw it
    assert tokenizer.decode(record["token_ids"]) == record["text"]
