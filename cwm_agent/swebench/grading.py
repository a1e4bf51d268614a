"""Grading: test log -> per-test statuses -> the official per-instance report, and the run summary.

The decisions are swebench 4.1.0's own (`get_eval_tests_report`, `get_resolution_status`, its log
parsers and failure markers); only reading the log is ours, because the official `get_logs_eval`
looks the parser up by repo and would not know the local instances.
"""

from __future__ import annotations

from typing import Any, Iterable

from cwm_agent.swebench.spec import END_TEST_OUTPUT, START_TEST_OUTPUT, EvalSpec, get_log_parser


def parse_test_log(spec: EvalSpec, log: str) -> tuple[dict[str, str], bool]:
    """(test -> status, whether the log is gradable), as the official `get_logs_eval` decides."""
    from swebench.harness.constants import APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT

    if any(code in log for code in (APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT)):
        return {}, False
    if START_TEST_OUTPUT not in log or END_TEST_OUTPUT not in log:
        return {}, False  # the test patch did not apply, or the script died before the tests
    parser = get_log_parser(spec.log_parser)
    between = log.split(START_TEST_OUTPUT)[1].split(END_TEST_OUTPUT)[0]
    # Like the official harness: when nothing is found between the markers, parse the whole log.
    return parser(between, spec.test_spec) or parser(log, spec.test_spec), True


def grade(spec: EvalSpec, model_patch: str | None, log: str) -> dict[str, Any]:
    """The official per-instance report: {instance_id: {patch_is_None, patch_exists,
    patch_successfully_applied, resolved, tests_status}}."""
    from swebench.harness.constants import FAIL_ONLY_REPOS, FAIL_TO_PASS, PASS_TO_PASS, EvalType, ResolvedStatus
    from swebench.harness.grading import get_eval_tests_report, get_resolution_status

    entry: dict[str, Any] = {
        "patch_is_None": model_patch is None,
        "patch_exists": model_patch is not None,
        "patch_successfully_applied": False,
        "resolved": False,
    }
    report = {spec.instance_id: entry}
    if model_patch is None:
        return report
    status_map, found = parse_test_log(spec, log)
    if not found:
        return report
    entry["patch_successfully_applied"] = True
    gold = {"instance_id": spec.instance_id, FAIL_TO_PASS: spec.FAIL_TO_PASS, PASS_TO_PASS: spec.PASS_TO_PASS}
    eval_type = EvalType.FAIL_ONLY if spec.repo in FAIL_ONLY_REPOS else EvalType.PASS_AND_FAIL
    tests_status = get_eval_tests_report(status_map, gold, eval_type=eval_type)
    entry["resolved"] = get_resolution_status(tests_status) == ResolvedStatus.FULL.value
    entry["tests_status"] = tests_status
    return report


RESOLVED = "resolved"
UNRESOLVED = "unresolved"
EMPTY_PATCH = "empty_patch"
ERROR = "error"


def make_summary(dataset_ids: Iterable[str], submitted_ids: Iterable[str], outcomes: dict[str, str]) -> dict[str, Any]:
    """The official run report (schema_version 2) from each evaluated instance's outcome.

    `outcomes` maps instance id -> resolved | unresolved | empty_patch | error; a submitted
    instance without an outcome (e.g. the run was interrupted) counts as an error, as officially.
    """
    dataset_ids = list(dataset_ids)
    submitted = sorted(set(submitted_ids) & set(dataset_ids))
    by = {key: [] for key in (RESOLVED, UNRESOLVED, EMPTY_PATCH, ERROR)}
    for instance_id in submitted:
        by[outcomes.get(instance_id, ERROR)].append(instance_id)
    completed = sorted(by[RESOLVED] + by[UNRESOLVED])
    incomplete = sorted(set(dataset_ids) - set(submitted))
    return {
        "total_instances": len(dataset_ids),
        "submitted_instances": len(submitted),
        "completed_instances": len(completed),
        "resolved_instances": len(by[RESOLVED]),
        "unresolved_instances": len(by[UNRESOLVED]),
        "empty_patch_instances": len(by[EMPTY_PATCH]),
        "error_instances": len(by[ERROR]),
        "completed_ids": completed,
        "incomplete_ids": incomplete,
        "empty_patch_ids": sorted(by[EMPTY_PATCH]),
        "submitted_ids": submitted,
        "resolved_ids": sorted(by[RESOLVED]),
        "unresolved_ids": sorted(by[UNRESOLVED]),
        "error_ids": sorted(by[ERROR]),
        "schema_version": 2,
    }
