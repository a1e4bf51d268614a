"""Test specs: for one instance, the eval script (text) and the log parser that reads its output.

Official instances get the eval script of swebench 4.1.0 (`make_eval_script_list` over its
repo/version table), built offline: `make_test_spec` also builds environment scripts, which fetch
requirement files from GitHub for some repos, and evaluation does not need them. Local instances get
a script of the same shape from their own table, or from the row's own `test_cmd` (+ `log_parser`);
5.x-style rows bring their own `eval_script`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from cwm_agent.errors import UserError
from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.images import ACTIVATE_ENV, REPO_DIR
from cwm_agent.swebench.local import LOCAL_REPO_SPECS

START_TEST_OUTPUT = ">>>>> Start Test Output"
END_TEST_OUTPUT = ">>>>> End Test Output"
HEREDOC_DELIMITER = "EOF_114329324912"  # the official scripts' delimiter, so scripts look alike
ENV_NAME = "testbed"


class SpecError(UserError, ValueError):
    """No eval script can be made for an instance (unknown repo/version and no script in the row)."""


@dataclass
class EvalSpec:
    """What evaluation needs to know about one instance."""

    instance_id: str
    repo: str
    version: str
    eval_script: str
    log_parser: str
    """Name of the parser: `official:<repo>` for the official per-repo table, else a swebench parser name."""
    FAIL_TO_PASS: list[str] = field(default_factory=list)
    PASS_TO_PASS: list[str] = field(default_factory=list)
    test_spec: Any = None
    """The official TestSpec (without environment scripts); official parsers take it as an argument."""


def _official_specs(repo: str, version: str) -> dict | None:
    from swebench.harness.constants import MAP_REPO_VERSION_TO_SPECS

    return MAP_REPO_VERSION_TO_SPECS.get(repo, {}).get(version)


def _script(lines: list[str]) -> str:
    # The official TestSpec.eval_script layout: no `-e`, the tests must be reverted at the end.
    return "\n".join(["#!/bin/bash", "set -uxo pipefail", *lines]) + "\n"


def _local_eval_lines(instance: SWEBenchInstance, test_cmd: str) -> list[str]:
    """The official Python eval script's steps, with the env activated only where the image has one."""
    from swebench.harness.test_spec.python import get_test_directives
    from swebench.harness.utils import get_modified_files

    test_files = get_modified_files(instance.test_patch)
    reset = f"git checkout {instance.base_commit} {' '.join(test_files)}" if test_files else "true"
    directives = get_test_directives(instance.as_dict())
    return [
        ACTIVATE_ENV,
        f"cd {REPO_DIR}",
        f"git config --global --add safe.directory {REPO_DIR}",
        "git status",
        "git show --stat",  # the base commit is the repository's first: its full diff would be the whole tree
        f"git -c core.fileMode=false diff {instance.base_commit}",
        reset,
        f"git apply -v - <<'{HEREDOC_DELIMITER}'\n{instance.test_patch}\n{HEREDOC_DELIMITER}",
        f": '{START_TEST_OUTPUT}'",
        " ".join([test_cmd, *directives]),
        f": '{END_TEST_OUTPUT}'",
        reset,
    ]


def make_eval_spec(instance: SWEBenchInstance) -> EvalSpec:
    """The eval spec of `instance`, without network. Raises SpecError when no script can be made."""
    extra = instance.model_extra or {}
    common = dict(
        instance_id=instance.instance_id,
        repo=instance.repo,
        version=instance.version,
        FAIL_TO_PASS=list(instance.FAIL_TO_PASS),
        PASS_TO_PASS=list(instance.PASS_TO_PASS),
    )
    local = LOCAL_REPO_SPECS.get(instance.repo, {}).get(instance.version)
    if extra.get("test_cmd") and not extra.get("eval_script"):
        # A row that names its own test command (e.g. `forage tasks`) gets the local script shape with it.
        local = {"test_cmd": str(extra["test_cmd"]), "log_parser": str(extra.get("log_parser") or "pytest")}
    if local is not None:
        return EvalSpec(
            eval_script=_script(_local_eval_lines(instance, local["test_cmd"])),
            log_parser=local["log_parser"],
            **common,
        )

    specs = _official_specs(instance.repo, instance.version)
    if specs is not None:
        from swebench.harness.constants import MAP_REPO_TO_EXT
        from swebench.harness.test_spec.create_scripts import make_eval_script_list
        from swebench.harness.test_spec.test_spec import TestSpec

        row = instance.as_dict()
        lines = make_eval_script_list(row, specs, ENV_NAME, REPO_DIR, instance.base_commit, instance.test_patch)
        test_spec = TestSpec(
            instance_id=instance.instance_id,
            repo=instance.repo,
            version=instance.version,
            repo_script_list=[],
            eval_script_list=lines,
            env_script_list=[],
            arch="x86_64",
            FAIL_TO_PASS=common["FAIL_TO_PASS"],
            PASS_TO_PASS=common["PASS_TO_PASS"],
            language=MAP_REPO_TO_EXT[instance.repo],
            docker_specs=specs.get("docker_specs", {}),
            namespace=None,
        )
        return EvalSpec(
            eval_script=test_spec.eval_script, log_parser=f"official:{instance.repo}", test_spec=test_spec, **common
        )

    if extra.get("eval_script"):
        # 5.x-style rows carry their own script and parser name.
        return EvalSpec(
            eval_script=str(extra["eval_script"]), log_parser=str(extra.get("log_parser") or "pytest"), **common
        )
    raise SpecError(
        f"{instance.instance_id}: no eval script for repo {instance.repo!r} version {instance.version!r} "
        "(not in swebench 4.1.0's table nor the local one, and the row has no `eval_script`)."
    )


def make_eval_script(instance: SWEBenchInstance) -> str:
    return make_eval_spec(instance).eval_script


def get_log_parser(name: str) -> Callable[[str, Any], dict[str, str]]:
    """The parser function for a parser name (`official:<repo>` or a swebench `parse_log_<name>`)."""
    if name.startswith("official:"):
        from swebench.harness.log_parsers import MAP_REPO_TO_PARSER

        return MAP_REPO_TO_PARSER[name.split(":", 1)[1]]
    from swebench.harness.log_parsers import python as python_parsers

    func = getattr(python_parsers, f"parse_log_{name}", None)
    if func is None:
        raise SpecError(f"Unknown log parser {name!r}.")
    return func
