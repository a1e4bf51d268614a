"""Regression tests: the repository's own tests that pass on the unpatched code.

Found by running the repository's test command (the one its evaluation uses: the local table or
swebench 4.1.0's `MAP_REPO_VERSION_TO_SPECS`) on the unpatched code, over the test files *related to
the files the candidates touch*, and keeping what passed. Never from the dataset's FAIL_TO_PASS /
PASS_TO_PASS (the evaluation's answers) nor from its test_patch.

Which test files: a test file (`test_*.py`, `*_test.py`, `tests.py`) is related to a touched source
file when its name without the `test_`/`_test` affix equals the source's module name (the package
name for an `__init__.py`) or its package's name, or starts with one of them and an underscore; or
when a directory on its path is named after the module, or starts with the module's or the
package's name and an underscore (Django's `tests/auth_tests/`, `tests/forms_tests/`). When no test
file is related and the repository has at most `WHOLE_SUITE_MAX` test
files, the whole suite runs (it is cheap); otherwise there are no regression tests for the instance.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Callable

from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.images import ACTIVATE_ENV, REPO_DIR
from cwm_agent.swebench.local import LOCAL_REPO_SPECS
from cwm_agent.swebench.spec import EvalSpec, get_log_parser, make_eval_spec

WHOLE_SUITE_MAX = 50
PASSING = frozenset({"PASSED", "XFAIL"})
"""Statuses (swebench's TestStatus values) that count as a pass."""


def is_test_file(path: str) -> bool:
    name = posixpath.basename(path)
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py") or name == "tests.py")


def _module_name(path: str) -> str:
    stem = posixpath.splitext(posixpath.basename(path))[0]
    if stem == "__init__":
        stem = posixpath.basename(posixpath.dirname(path))
    return stem


def _test_name(path: str) -> str:
    stem = posixpath.splitext(posixpath.basename(path))[0]
    return stem.removeprefix("test_").removesuffix("_test")


def _related(test: str, modules: set[str], packages: set[str]) -> bool:
    name, dirs = _test_name(test), test.split("/")[:-1]
    for n in modules | packages:
        if name == n or name.startswith(n + "_") or any(d.startswith(n + "_") for d in dirs):
            return True
    return any(n in dirs for n in modules)


def related_test_files(repo_files: list[str], touched: list[str]) -> tuple[list[str], str]:
    """(test files to run, how they were chosen) for the files the candidates touch."""
    tests = sorted(f for f in repo_files if is_test_file(f))
    sources = [f for f in touched if f.endswith(".py") and not is_test_file(f)]
    modules = {_module_name(f) for f in sources} - {""}
    packages = {posixpath.basename(posixpath.dirname(f)) for f in sources if not f.endswith("__init__.py")}
    packages -= {"", "src", "lib"} | modules
    names = modules | packages
    related = [t for t in tests if _related(t, modules, packages)]
    if related:
        return related, f"test files related to {', '.join(sorted(names))}"
    if len(tests) <= WHOLE_SUITE_MAX:
        return tests, f"no related test file; the whole suite ({len(tests)} files)"
    return [], f"no related test file, and the suite ({len(tests)} files) is too large to run whole"


def files_key(files: list[str]) -> str:
    """The cache's test id of a regression run over these files."""
    return "regression:" + hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()[:12]


@dataclass
class SuiteCommand:
    """How to run the repository's tests over some files in the instance's container, and read the log."""

    setup: list[str]
    """Lines run before the tests (activate the env, cd, the spec's eval commands)."""
    install: str | None
    """The spec's install step, run after a patch is applied (compiled repositories need it)."""
    command: Callable[[list[str]], str]
    parse: Callable[[str], dict[str, str]]


def suite_command(instance: SWEBenchInstance) -> SuiteCommand:
    """The repository's own test command and log parser (as its evaluation runs them)."""
    spec: EvalSpec = make_eval_spec(instance)
    parser = get_log_parser(spec.log_parser)
    local = LOCAL_REPO_SPECS.get(instance.repo, {}).get(instance.version)
    setup = [ACTIVATE_ENV, f"cd {REPO_DIR}", f"git config --global --add safe.directory {REPO_DIR}"]
    install = None
    if local is not None:
        base_cmd = local["test_cmd"]
    else:
        from swebench.harness.constants import MAP_REPO_VERSION_TO_SPECS

        specs = MAP_REPO_VERSION_TO_SPECS.get(instance.repo, {}).get(instance.version) or {}
        base_cmd = specs.get("test_cmd") or ""
        if isinstance(base_cmd, list):
            base_cmd = " && ".join(base_cmd)
        setup += list(specs.get("eval_commands", []))
        install = specs.get("install")
    if not base_cmd:
        base_cmd = "pytest -rA"

    def command(files: list[str]) -> str:
        from swebench.harness.test_spec.python import get_test_directives

        fake = "".join(f"diff --git a/{f} b/{f}\n" for f in files)
        directives = get_test_directives({"repo": instance.repo, "test_patch": fake})
        return " ".join([base_cmd, *directives])

    def parse(log: str) -> dict[str, str]:
        return parser(log, spec.test_spec)

    return SuiteCommand(setup, install, command, parse)
