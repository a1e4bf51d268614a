"""SWE-bench datasets, image names and eval scripts: offline, over the real 500 Verified rows."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cwm_agent.sandbox.base import ImageNotFoundError
from cwm_agent.swebench.dataset import DatasetError, SWEBenchInstance, load_instances, load_predictions
from cwm_agent.swebench.images import candidate_images, local_image_name, official_image_name, resolve_image
from cwm_agent.swebench.local import INSTANCES_FILE
from cwm_agent.swebench.spec import END_TEST_OUTPUT, START_TEST_OUTPUT, SpecError, make_eval_spec

VERIFIED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "swebench_verified.jsonl"


@pytest.fixture(scope="module")
def verified() -> list[SWEBenchInstance]:
    if not VERIFIED.is_file():
        reason = f"{VERIFIED} is missing (SWE-bench Verified, from the shared data beside the checkout)"
        if os.environ.get("CI") == "true":  # CI runs with the shared data beside the clone: it must be there
            pytest.fail(reason)
        pytest.skip(reason)
    return load_instances(VERIFIED)


def test_loads_all_500_verified_rows_with_test_lists_decoded(verified):
    assert len(verified) == 500
    assert len({i.instance_id for i in verified}) == 500
    first = verified[0]
    assert first.instance_id == "astropy__astropy-12907"
    assert isinstance(first.FAIL_TO_PASS, list) and first.FAIL_TO_PASS
    assert all(isinstance(t, str) for i in verified for t in i.FAIL_TO_PASS + i.PASS_TO_PASS)
    # Extra columns of the file are kept, not dropped.
    assert first.model_extra.get("difficulty")


def test_filters_by_ids_repos_slice_and_seeded_shuffle(verified):
    ids = ["django__django-11099", "sympy__sympy-24443"]
    assert [i.instance_id for i in load_instances(VERIFIED, instance_ids=ids)] == ids
    flask = load_instances(VERIFIED, repos=["pallets/flask", "psf/requests"])
    assert {i.repo for i in flask} == {"pallets/flask", "psf/requests"} and len(flask) == 9
    assert [i.instance_id for i in load_instances(VERIFIED, slice="10:13")] == [i.instance_id for i in verified[10:13]]
    a = load_instances(VERIFIED, shuffle_seed=7, slice=":20")
    b = load_instances(VERIFIED, shuffle_seed=7, slice=":20")
    assert [i.instance_id for i in a] == [i.instance_id for i in b]
    assert [i.instance_id for i in a] != [i.instance_id for i in verified[:20]]


def test_unknown_ids_and_bad_inputs_are_clear_errors(tmp_path, verified):
    with pytest.raises(DatasetError, match="nope__nope-1, also__missing-2"):
        load_instances(VERIFIED, instance_ids=["django__django-11099", "nope__nope-1", "also__missing-2"])
    with pytest.raises(DatasetError, match="does not exist"):
        load_instances(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instance_id": "a__b-1", "repo": "a/b", "base_commit": "x"}\nnot json\n')
    with pytest.raises(DatasetError, match="bad.jsonl:2"):
        load_instances(bad)
    with pytest.raises(DatasetError, match="START:STOP"):
        load_instances(VERIFIED, slice="5")


def test_test_lists_accept_lists_or_json_strings_and_formats_agree(tmp_path, verified):
    rows = [json.loads(line) for line in VERIFIED.read_text().splitlines()[:3]]
    as_lists = [
        dict(r, FAIL_TO_PASS=json.loads(r["FAIL_TO_PASS"]), PASS_TO_PASS=json.loads(r["PASS_TO_PASS"])) for r in rows
    ]
    (tmp_path / "d.json").write_text(json.dumps(as_lists))
    from_json = load_instances(tmp_path / "d.json")
    assert [i.model_dump() for i in from_json] == [i.model_dump() for i in verified[:3]]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert [i.model_dump() for i in load_instances(tmp_path / "d.parquet")] == [i.model_dump() for i in verified[:3]]


def test_5x_style_rows_keep_their_image_and_script(tmp_path):
    row = {
        "instance_id": "x__y-1",
        "repo": "x/y",
        "base_commit": "abc",
        "image": "reg/x:1",
        "eval_script": "#!/bin/bash\necho hi\n",
        "log_parser": "pytest",
        "FAIL_TO_PASS": ["t"],
    }
    inst = SWEBenchInstance.model_validate(row)
    assert inst.image == "reg/x:1"
    assert candidate_images(inst)[2] == "reg/x:1"
    spec = make_eval_spec(inst)
    assert spec.eval_script == "#!/bin/bash\necho hi\n" and spec.log_parser == "pytest"
    with pytest.raises(SpecError, match="x/y"):
        make_eval_spec(SWEBenchInstance(instance_id="x__y-2", repo="x/y", base_commit="abc"))


@pytest.mark.docker
def test_a_row_image_that_is_not_a_valid_reference_is_an_image_not_found_error(docker_client):
    """Docker answers 400 for such a name; it must be the per-instance error the batch records, not a crash."""
    inst = SWEBenchInstance(instance_id="x__y-3", repo="x/y", base_commit="abc", image="Bad::Name")
    with pytest.raises(ImageNotFoundError, match="Bad::Name"):
        resolve_image(inst, docker_client)


def test_image_names_follow_the_official_conventions():
    assert official_image_name("django__django-11099") == "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert local_image_name("django__django-11099") == "sweb.eval.x86_64.django__django-11099:latest"


def test_image_name_and_offline_eval_script_for_every_verified_instance(verified):
    from unidiff import PatchSet

    for inst in verified:
        name = official_image_name(inst.instance_id)
        assert re.fullmatch(r"swebench/sweb\.eval\.x86_64\.[a-z0-9_.-]+:latest", name) and "__" not in name
        script = make_eval_spec(inst).eval_script
        assert script.startswith("#!/bin/bash\n")
        start, end = script.index(START_TEST_OUTPUT), script.index(END_TEST_OUTPUT)
        test_cmd = script[start:end]
        assert inst.base_commit in script
        test_files = [f.path for f in PatchSet(inst.test_patch) if not f.is_removed_file and f.path.endswith(".py")]
        for path in test_files:
            if inst.repo == "django/django":
                module = path.removeprefix("tests/").removesuffix(".py").replace("/", ".")
                assert module in test_cmd, (inst.instance_id, module)
            else:
                assert path in test_cmd, (inst.instance_id, path)


def test_predictions_official_format(tmp_path):
    good = tmp_path / "preds.jsonl"
    good.write_text(
        json.dumps({"instance_id": "a__b-1", "model_name_or_path": "m", "model_patch": "diff"})
        + "\n"
        + json.dumps({"instance_id": "a__b-2", "model_name_or_path": "m", "model_patch": None})
        + "\n"
    )
    preds = load_predictions(good)
    assert [(p.instance_id, p.model_patch) for p in preds] == [("a__b-1", "diff"), ("a__b-2", None)]
    as_list = tmp_path / "preds.json"
    as_list.write_text(json.dumps([{"instance_id": "a__b-1", "model_patch": "d"}]))
    assert load_predictions(as_list)[0].model_patch == "d"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model_patch": "x"}\n')
    with pytest.raises(DatasetError, match="official format"):
        load_predictions(bad)


def test_local_instances_are_swebench_rows_with_eval_scripts():
    local = load_instances(INSTANCES_FILE)
    assert len(local) >= 3
    for inst in local:
        assert inst.patch.startswith("diff --git") and inst.test_patch.startswith("diff --git")
        assert inst.FAIL_TO_PASS and inst.PASS_TO_PASS and len(inst.base_commit) == 40
        spec = make_eval_spec(inst)
        assert spec.log_parser == "pytest" and "pytest" in spec.eval_script
        assert START_TEST_OUTPUT in spec.eval_script


def test_cli_errors_are_one_line_without_traceback(tmp_path, verified):
    from cwm_agent.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["swebench", "eval", "-d", str(VERIFIED), "-o", str(tmp_path / "o"), "-p", str(tmp_path / "none.jsonl")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app,
        ["swebench", "eval", "-d", str(VERIFIED), "-o", str(tmp_path / "o"), "--gold", "--instance-ids", "nope__x-1"],
    )
    assert result.exit_code == 2 and "nope__x-1" in result.output
    result = runner.invoke(app, ["swebench", "eval-script", "-d", str(VERIFIED), "django__django-11099"])
    assert result.exit_code == 0 and START_TEST_OUTPUT in result.output


def test_unreachable_hub_fails_fast_with_advice(monkeypatch, tmp_path):
    import time

    # A closed port on 127.0.0.1 stands in for an unreachable hub (no traffic leaves the machine).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    pytest.importorskip("datasets")
    started = time.monotonic()
    with pytest.raises(DatasetError, match="unreachable.*local .jsonl"):
        load_instances("princeton-nlp/SWE-bench_Verified")
    assert time.monotonic() - started < 15


def test_unreadable_dataset_and_predictions_are_clear_errors(tmp_path):
    from cwm_agent.swebench.dataset import DatasetError, load_instances, load_predictions

    binary = tmp_path / "data.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_instances(binary)
    folder = tmp_path / "preds.jsonl"
    folder.mkdir()
    with pytest.raises(DatasetError):
        load_predictions(folder)
