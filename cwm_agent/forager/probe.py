"""A pytest plugin copied into the task's container (`-p forage_probe`): it needs nothing but pytest.

It writes one JSON file (path in $FORAGE_OUT) with every test's outcome and failure text, the
collection errors, the test files, and with $FORAGE_TRACE=1 the functions each test called: for each
test, the (file, first line) of every code object under $FORAGE_ROOT entered while the test ran
(setup, call and teardown, threads included), collected with `sys.setprofile` (call events only, so
far cheaper than a line tracer; the images need no `coverage` package); and under `<collection>`, the
functions module-level code called while the tests were collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading

import pytest

_results: dict[str, dict] = {}
_cover: dict[str, list] = {}
_errors: list[str] = []
_test_files: set[str] = set()
_codes: set = set()
_MAX_TEXT = 6000


def _root() -> str:
    return os.path.realpath(os.environ.get("FORAGE_ROOT") or os.getcwd())


def _tracing() -> bool:
    return os.environ.get("FORAGE_TRACE") == "1"


def _profile(frame, event, arg):
    if event == "call":
        _codes.add(frame.f_code)


def pytest_collection_modifyitems(session, config, items):
    root = _root()
    for item in items:
        path = str(getattr(item, "path", None) or item.fspath)
        _test_files.add(os.path.relpath(path, root))


def pytest_collectreport(report):
    if report.failed:
        _errors.append(f"{report.nodeid}: {report.longreprtext[:_MAX_TEXT]}")


def _start() -> None:
    _codes.clear()
    sys.setprofile(_profile)
    threading.setprofile(_profile)


def _stop(key: str) -> None:
    sys.setprofile(None)
    threading.setprofile(None)
    root = _root() + os.sep
    found = set()
    for code in list(_codes):
        name = code.co_filename
        if name.startswith(root):
            found.add((name[len(root) :], code.co_firstlineno))
    _cover[key] = sorted(found)


@contextlib.contextmanager
def _traced(key: str):
    """Record under `key` the functions entered inside the block (with $FORAGE_TRACE=1)."""
    trace = _tracing()
    if trace:
        _start()
    try:
        yield
    finally:
        if trace:
            _stop(key)


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    """Module-level code runs here: what it calls reaches every test (key `<collection>`)."""
    with _traced("<collection>"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _traced(item.nodeid):
        yield


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "text": ""})
    if report.when == "call":
        if entry["outcome"] == "passed":
            entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else report.outcome
    elif report.failed:
        entry["outcome"] = "error"
    elif report.skipped and report.when == "setup":
        entry["outcome"] = "skipped"
    if report.failed and not entry["text"]:
        entry["text"] = report.longreprtext[:_MAX_TEXT]


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("FORAGE_OUT")
    if not out:
        return
    data = {
        "tests": _results,
        "cover": _cover,
        "errors": _errors,
        "test_files": sorted(_test_files),
        "exitstatus": int(exitstatus),
    }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
