"""Reviewing a real run: `report` opened in a real browser, `report --compare`, `swebench stats`, `show`.

Two small runs over the local SWE-bench instances with a scripted model (tests/review_policy.py),
built once for the module: run A (2 rollouts) has resolved, unresolved, errored (model error) and
unfinished (turn limit) episodes and a format-error turn holding markup; run B resolves what A did
not and has a test-generation episode per instance. Both are evaluated with `swebench eval` (A's
rollout 1 under eval/rollout-1). The pages are opened in Debian's chromium through Playwright; a
screenshot of each is saved under the test's tmp dir (the path is printed: run pytest with -s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from review_policy import SEED, ReviewPolicy

from cwm_agent.model.scripted_server import ScriptedServer
from cwm_agent.swebench.dataset import load_instances
from cwm_agent.swebench.local import INSTANCES_FILE

pytestmark = pytest.mark.docker

INFLECTION, SIX, MORE = "cwm-local__inflection-1", "cwm-local__six-1", "cwm-local__more-itertools-1"
PLAN_A = {(INFLECTION, 0): "gold", (INFLECTION, 1): "wrong", (SIX, 0): "wrong", (SIX, 1): "gold",
          (MORE, 0): "error", (MORE, 1): "wander"}  # fmt: skip
PLAN_B = {(INFLECTION, 0): "wander", (SIX, 0): "gold", (MORE, 0): "gold"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def cwm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cwm_agent.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "160", "NO_COLOR": "1"},
    )  # fmt: skip
    return proc


def _run_and_eval(server: ScriptedServer, out: Path, rollouts: int, test_rollouts: int = 0) -> None:
    proc = cwm("swebench", "run", "--dataset", str(INSTANCES_FILE), "--output", str(out), "--workers", "3",
               "--model-url", server.url, "--rollouts", str(rollouts), "--test-rollouts", str(test_rollouts),
               "--seed", str(SEED), "-c", "agent.max_turns=8")  # fmt: skip
    assert (out / "results.jsonl").exists(), proc.stderr
    for k in range(rollouts):
        preds = out / "preds.jsonl" if k == 0 else out / "preds" / f"rollout-{k}.jsonl"
        target = out / "eval" if k == 0 else out / "eval" / f"rollout-{k}"
        proc = cwm("swebench", "eval", "--dataset", str(INSTANCES_FILE), "--predictions", str(preds),
                   "--output", str(target), "--workers", "3")  # fmt: skip
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("review")
    policy = ReviewPolicy(load_instances(str(INSTANCES_FILE)))
    with ScriptedServer(policy=policy) as server:
        policy.plan = PLAN_A
        _run_and_eval(server, root / "A", rollouts=2)
        policy.plan = PLAN_B
        _run_and_eval(server, root / "B", rollouts=1, test_rollouts=1)
    return root / "A", root / "B"


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[test])")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs {CHROMIUM} (Debian's chromium; scripts/setup.sh --test installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def _eval_report(run: Path) -> dict:
    return json.loads((run / "eval" / "report.json").read_text())


def test_stats_counts_equal_the_evaluation(runs):
    run_a, run_b = runs
    proc = cwm("swebench", "stats", str(run_a), "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    official = _eval_report(run_a)
    assert stats["dataset"] == official["total_instances"] == 3
    assert stats["resolved"] == official["resolved_instances"] == 1
    assert stats["unresolved"] == official["unresolved_instances"] == 1
    assert stats["empty_patch"] == official["empty_patch_instances"] == 1
    assert stats["submitted"] == 2  # the model-error episode submitted nothing
    assert stats["rollouts"] == 2 and stats["evaluated_rollouts"] == 2
    assert round(stats["pass_at_1"], 3) == round(1 / 3, 3) and round(stats["pass_at_k"], 3) == round(2 / 3, 3)
    assert stats["endings"] == {"patch": {"submitted": 4, "model_error": 1, "turn_limit": 1}}
    assert {t["tool"] for t in stats["tools"]} >= {"bash", "create", "submit"}
    assert stats["format_errors"] >= 2  # the `wrong` episodes' reply without </think>
    text = cwm("swebench", "stats", str(run_b))
    assert text.returncode == 0 and "resolved" in text.stdout and "66.7% of dataset" in text.stdout
    stats_b = json.loads(cwm("swebench", "stats", str(run_b), "--json").stdout)
    assert stats_b["endings"]["test"] == {"submitted": 3} and stats_b["resolved"] == 2
    missing = cwm("swebench", "stats", str(run_a / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such folder" in missing.stderr


def test_show_over_a_run_folder(runs):
    run_a, _ = runs
    proc = cwm("show", str(run_a), SIX)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "reply (not a valid call)" in out and "<script>window.__pwned" in out
    error = out.split("format error: ", 1)[1].splitlines()[0]
    assert out.count(error[:40]) == 1  # the error once (it is also the user message the model got)
    assert "evaluation: unresolved" in out and "failed: test_six.py::test_add_metaclass" in out
    listing = cwm("show", str(run_a), SIX, "--list")
    assert listing.returncode == 0 and "format error" in listing.stdout and "submit" in listing.stdout
    rollout1 = cwm("show", str(run_a), MORE, "--rollout", "1", "--list")
    assert rollout1.returncode == 0 and "turn_limit" in rollout1.stdout
    no_id = cwm("show", str(run_a))
    assert no_id.returncode == 2 and "name an instance" in no_id.stderr and no_id.stderr.count("\n") == 1
    unknown = cwm("show", str(run_a), "nobody__nothing-1")
    assert unknown.returncode == 2 and "has no trajectory of nobody__nothing-1" in unknown.stderr


def test_report_in_a_browser(runs, browser, tmp_path):
    run_a, _ = runs
    out = tmp_path / "report"
    proc = cwm("report", str(run_a), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    index = out / "index.html"
    assert index.exists() and str(index) in proc.stdout
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    fetched: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(index.as_uri())
    official = _eval_report(run_a)

    def figure(name: str) -> str:
        return page.locator(f'[data-figure="{name}"]').inner_text().strip()

    assert figure("resolved") == str(official["resolved_instances"])
    assert figure("dataset") == str(official["total_instances"])
    assert figure("unresolved") == str(official["unresolved_instances"])
    assert figure("pass1") == "33.3%" and figure("passk") == "66.7%"
    assert page.locator("svg.plot").count() == 3
    screenshot(page, tmp_path / "index.png")

    rows = page.locator("#items tbody tr")
    assert rows.count() == 6

    def visible_ids() -> list[str]:
        return [r.locator("td").first.inner_text().strip() for r in rows.all() if r.is_visible()]

    page.select_option("#f-resolved", "yes")
    assert sorted(visible_ids()) == [INFLECTION, SIX]  # rollout 0 of inflection, rollout 1 of six
    assert page.locator("#shown-count").inner_text() == "2 of 6 shown"
    page.select_option("#f-resolved", "")
    page.select_option("#f-ending", "model_error")
    assert visible_ids() == [MORE]
    page.select_option("#f-ending", "")
    page.select_option("#f-repo", "cwm-local/six")
    assert visible_ids() == [SIX, SIX]
    page.select_option("#f-repo", "")
    page.fill("#f-text", "limit of 8")
    assert visible_ids() == [MORE]
    page.fill("#f-text", "")
    assert len(visible_ids()) == 6

    turns_col = page.locator("#items thead th", has_text="turns")

    def turns() -> list[int]:
        index = [th.inner_text().strip() for th in page.locator("#items thead th").all()].index("turns")
        return [int(r.locator("td").nth(index).inner_text()) for r in rows.all()]

    turns_col.click()
    assert turns() == sorted(turns()) and turns()[0] == 0
    turns_col.click()
    assert turns() == sorted(turns(), reverse=True) and turns()[0] == 8

    # A trajectory page, from the table: the six instance's rollout 0 (a format error, then an unresolved patch).
    page.locator("#items tbody tr", has=page.locator('td[data-sort="cwm-local__six-1"]')).locator("a").click()
    assert page.locator("h1").inner_text().strip() == SIX
    first = page.locator("details.turn").first
    assert not first.locator(".turn-body").is_visible()
    first.locator(":scope > summary").click()
    assert first.locator(".turn-body").is_visible()
    assert first.locator(".reply.error").inner_text().count("<script>window.__pwned = 1</script>") == 1
    assert page.evaluate("window.__pwned") is None  # the model's markup is shown, never run
    assert "format error:" in first.inner_text()
    assert page.locator("#patch .hl-gi").first.is_visible()  # the patch, as a highlighted diff
    assert "+REVIEWED = True" in page.locator("#patch").inner_text()
    edit = page.locator("details.turn", has=page.locator("summary .tool", has_text="edit"))
    edit.locator(":scope > summary").click()  # the edit's SEARCH/REPLACE block, as a diff
    assert edit.locator(".hl-gd").last.inner_text() == "-REVIEWED = False"
    assert edit.locator(".hl-gi").last.inner_text() == "+REVIEWED = True"
    assert page.locator("#eval-outcome").inner_text() == "unresolved"
    assert "test_six.py::test_add_metaclass" in page.locator("#failed-tests").inner_text()
    page.fill("#turn-search", "fix.patch")
    assert (
        page.locator("details.turn.search-miss").count() >= 1 and page.locator("details.turn.search-hit").count() >= 2
    )
    page.fill("#turn-search", "")
    screenshot(page, tmp_path / "trajectory-six.png")

    # The resolved one: a created file shown as a diff, its tests all passed.
    page.goto((out / "items" / f"{INFLECTION}.html").as_uri())
    page.locator("#expand-all").click()
    assert page.locator("details.turn").first.locator(".hl-gi").first.is_visible()
    assert page.locator("#eval-outcome").inner_text() == "resolved"
    assert page.locator("#failed-tests tr").count() == 0
    screenshot(page, tmp_path / "trajectory-inflection.png")
    assert not errors, errors
    assert fetched and all(url.startswith("file://") for url in fetched), fetched  # offline: nothing else fetched
    page.close()


def test_compare_in_a_browser(runs, browser, tmp_path):
    run_a, run_b = runs
    out = tmp_path / "compare"
    proc = cwm("report", str(run_a), "--compare", str(run_b), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto((out / "index.html").as_uri())
    only_a = page.locator("#only-a tbody tr")
    only_b = page.locator("#only-b tbody tr")
    assert [r.locator("td").first.inner_text() for r in only_a.all()] == [INFLECTION]
    assert sorted(r.locator("td").first.inner_text() for r in only_b.all()) == sorted([SIX, MORE])
    resolved = page.locator('tr[data-figure="resolved"] td')
    assert [c.inner_text() for c in resolved.all()] == ["resolved", "1", "2", "+1"]
    screenshot(page, tmp_path / "compare.png")
    # Both trajectories of an instance are a click away.
    only_a.first.locator("td.run-b a").click()
    assert (
        page.locator("h1").inner_text().strip() == INFLECTION and "turn_limit" in page.locator("#ending").inner_text()
    )
    page.go_back()
    only_a.first.locator("td.run-a a").click()
    assert page.locator("#eval-outcome").inner_text() == "resolved"
    page.close()


def test_report_mistakes(runs, tmp_path):
    run_a, _ = runs
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    for args, words in [
        ((str(tmp_path / "missing"),), "no such folder"),
        ((str(not_a_run),), "is not a run folder"),
        ((str(run_a), "--compare", str(not_a_run)), "is not a run folder"),
        ((str(run_a), "--eval", str(tmp_path / "noeval")), "--eval"),
    ]:
        proc = cwm("report", *args)
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = cwm("report", str(run_a), "-o", str(a_file))
    assert proc.returncode == 2 and "is a file" in proc.stderr


def test_report_of_a_run_still_going_and_not_evaluated(runs, tmp_path):
    run_a, _ = runs
    live = tmp_path / "live"
    shutil.copytree(run_a, live, ignore=shutil.ignore_patterns("eval", "report"))
    # An episode in flight: its trajectory has no result line, and results.jsonl has no line for it.
    lines = (live / "results.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["item_id"] != SIX]
    assert len(kept) == len(lines) - 1
    (live / "results.jsonl").write_text("\n".join(kept) + "\n")
    trajectory = live / "trajectories" / f"{SIX}.jsonl"
    trajectory.write_text("".join(trajectory.read_text().splitlines(keepends=True)[:-1]))
    proc = cwm("report", str(live))
    assert proc.returncode == 0, proc.stderr
    index = (live / "report" / "index.html").read_text()
    assert "not evaluated" in index and "still running" in index
    page = (live / "report" / "items" / f"{SIX}.html").read_text()
    assert "No result record" in page
    stats = json.loads(cwm("swebench", "stats", str(live), "--json").stdout)
    assert stats["running"] == 1 and stats["evaluated"] is False


def test_report_of_a_run_with_test_generation(runs, browser, tmp_path):
    _, run_b = runs
    out = tmp_path / "report-b"
    assert cwm("report", str(run_b), "-o", str(out)).returncode == 0
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto((out / "index.html").as_uri())
    rows = page.locator("#items tbody tr")
    assert rows.count() == 6
    page.select_option("#f-kind", "test")
    assert sum(r.is_visible() for r in rows.all()) == 3
    page.locator("#items tbody tr:visible a").first.click()
    assert page.locator("h1").inner_text().endswith(".test-0")
    assert page.locator("#patch h2").inner_text() == "Submitted test"
    assert 'print("Issue reproduced")' in page.locator("#patch pre").inner_text()
    screenshot(page, tmp_path / "trajectory-test.png")
    page.close()
    show = cwm("show", str(run_b), SIX, "--kind", "test", "--list")
    assert show.returncode == 0 and "create" in show.stdout and "final reply" in show.stdout
