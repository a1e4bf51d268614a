"""Maintainer tool: derive the local instances from the pinned sdists and write instances.jsonl.

    python -m cwm_agent.swebench.local.make_instances

For each instance: the released source is committed, a small piece of logic is reverted to a buggy
form and the upstream tests that catch it are held back (that tree is the base commit); the gold
patch restores the source and the test patch restores the tests. FAIL_TO_PASS / PASS_TO_PASS are
measured the way the official validation does: run the tests with the test patch, before and after
the gold patch, in the instance image, and parse the log with the instance's parser.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.local import INSTANCES_FILE, LOCAL_REPO_SPECS, SOURCES, base_diff_path
from cwm_agent.swebench.local.build import _unpack, build_instance_image, fetch_sdist

# instance_id -> repo, problem statement, source edits (file, released text, buggy text),
# test edits (file, released, held back)
DEFINITIONS = {
    "cwm-local__inflection-1": dict(
        repo="cwm-local/inflection",
        problem=(
            "ordinal() gives the wrong suffix for negative numbers\n\n"
            "`inflection.ordinal(-1)` returns `'th'` and `inflection.ordinalize(-1021)` returns `'-1021th'`; "
            "they should be `'st'` and `'-1021st'`, the same suffix as for the positive number "
            "(`ordinal(-11)` is `'th'` like `ordinal(11)`).\n"
        ),
        source=[("inflection/__init__.py", "    number = abs(int(number))\n", "    number = int(number)\n")],
        tests=[("test_inflection.py", None, None)],  # filled below: the negative ORDINAL_NUMBERS
    ),
    "cwm-local__six-1": dict(
        repo="cwm-local/six",
        problem=(
            "add_metaclass fails on a class whose __slots__ is a single string\n\n"
            '```python\n@six.add_metaclass(Meta)\nclass A(object):\n    __slots__ = "ab"\n```\n'
            "raises `KeyError: 'a'`. A string `__slots__` names one slot (`ab`), not one slot per character.\n"
        ),
        source=[
            (
                "six.py",
                "        if slots is not None:\n            if isinstance(slots, str):\n"
                "                slots = [slots]\n"
                "            for slots_var in slots:\n",
                "        if slots is not None:\n            for slots_var in slots:\n",
            )
        ],
        tests=[
            (
                "test_six.py",
                "    # Test a class with string for slots.\n"
                "    class MyStringSlots(object):\n"
                '        __slots__ = "ab"\n'
                "    MyStringSlots = six.add_metaclass(Meta1)(MyStringSlots)\n"
                '    assert MyStringSlots.__slots__ == "ab"\n'
                "    instance = MyStringSlots()\n"
                '    instance.ab = "foo"\n'
                '    pytest.raises(AttributeError, setattr, instance, "a", "baz")\n'
                '    pytest.raises(AttributeError, setattr, instance, "b", "baz")\n\n',
                "",
            )
        ],
    ),
    "cwm-local__more-itertools-1": dict(
        repo="cwm-local/more-itertools",
        problem=(
            "split_at drops a separator when maxsplit and keep_separator are combined\n\n"
            "```python\n"
            ">>> list(split_at([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], lambda x: x % 3 == 0, "
            "maxsplit=2, keep_separator=True))\n"
            "[[1, 2], [3], [4, 5], [7, 8, 9, 10]]\n```\n"
            "The separator `[6]` at the last split is missing; expected `[[1, 2], [3], [4, 5], [6], [7, 8, 9, 10]]`.\n"
        ),
        source=[
            (
                "more_itertools/more.py",
                "            yield buf\n            if keep_separator:\n                yield [item]\n"
                "            if maxsplit == 1:\n                yield list(it)\n"
                "                return\n"
                "            buf = []\n            maxsplit -= 1\n",
                "            yield buf\n            if maxsplit == 1:\n                yield list(it)\n"
                "                return\n"
                "            if keep_separator:\n                yield [item]\n"
                "            buf = []\n            maxsplit -= 1\n",
            )
        ],
        tests=[
            (
                "tests/test_more.py",
                "    def test_combination(self):\n"
                "        iterable = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
                "        pred = lambda x: x % 3 == 0\n"
                "        actual = list(\n"
                "            mi.split_at(iterable, pred, maxsplit=2, keep_separator=True)\n"
                "        )\n"
                "        expected = [[1, 2], [3], [4, 5], [6], [7, 8, 9, 10]]\n"
                "        self.assertEqual(actual, expected)\n\n",
                "",
            )
        ],
    ),
}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _edit(root: Path, path: str, old: str, new: str) -> None:
    target = root / path
    text = target.read_text()
    assert text.count(old) == 1, f"{path}: expected exactly one occurrence of the edited text"
    target.write_text(text.replace(old, new))


def _hide_negative_ordinals(root: Path) -> None:
    target = root / "test_inflection.py"
    lines = target.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith('    ("-')]
    assert len(kept) < len(lines)
    target.write_text("".join(kept))


def _derive(instance_id: str, spec: dict, tmp: Path) -> dict:
    source = SOURCES[spec["repo"]]
    _unpack(fetch_sdist(source), source.top_dir, tmp)
    repo = tmp / "src"
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "released")
    for path, old, new in spec["source"]:
        _edit(repo, path, old, new)
    for path, old, new in spec["tests"]:
        if old is None:
            _hide_negative_ordinals(repo)
        else:
            _edit(repo, path, old, new)
    base_diff = _git(repo, "diff")
    _git(repo, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-am", "base")
    source_files = [p for p, _, _ in spec["source"]]
    test_files = [p for p, _, _ in spec["tests"]]
    _git(repo, "checkout", "HEAD~1", "--", *source_files)
    gold = _git(repo, "diff", "HEAD")
    _git(repo, "reset", "-q", "--hard")
    _git(repo, "checkout", "HEAD~1", "--", *test_files)
    test_patch = _git(repo, "diff", "HEAD")
    return {"base_diff": base_diff, "patch": gold, "test_patch": test_patch}


def _status_map(image: str, instance: SWEBenchInstance, with_gold: bool) -> dict[str, str]:
    from swebench.harness.log_parsers.python import parse_log_pytest

    from cwm_agent.swebench.spec import make_eval_script

    script = make_eval_script(instance)
    if with_gold:
        script = script.replace(
            "cd /testbed\n", "cd /testbed\ngit apply - <<'EOF_GOLD'\n" + instance.patch + "\nEOF_GOLD\n", 1
        )
    out = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", "none", image, "bash", "-s"],
        input=script,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ).stdout
    return parse_log_pytest(out.split(">>>>> Start Test Output")[1].split(">>>>> End Test Output")[0], None)


def main() -> None:
    rows = []
    for instance_id, spec in DEFINITIONS.items():
        with tempfile.TemporaryDirectory() as tmp:
            derived = _derive(instance_id, spec, Path(tmp))
        base_diff_path(instance_id).write_text(derived["base_diff"])
        version = SOURCES[spec["repo"]].version
        assert version in LOCAL_REPO_SPECS[spec["repo"]]
        instance = SWEBenchInstance(
            instance_id=instance_id,
            repo=spec["repo"],
            base_commit="0" * 40,
            version=version,
            problem_statement=spec["problem"],
            patch=derived["patch"],
            test_patch=derived["test_patch"],
            created_at="2024-01-01T00:00:00Z",
        )
        image = build_instance_image(instance, check_commit=False)
        head = subprocess.run(
            ["docker", "run", "--rm", image, "git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        instance.base_commit = head
        before = _status_map(image, instance, with_gold=False)
        after = _status_map(image, instance, with_gold=True)
        passed = {"PASSED", "XFAIL"}
        instance.FAIL_TO_PASS = sorted(t for t, s in after.items() if s in passed and before.get(t) not in passed)
        instance.PASS_TO_PASS = sorted(t for t, s in after.items() if s in passed and before.get(t) in passed)
        assert instance.FAIL_TO_PASS, f"{instance_id}: no test fails before the gold patch"
        print(
            f"{instance_id}: base {head[:10]}, {len(instance.FAIL_TO_PASS)} FAIL_TO_PASS, "
            f"{len(instance.PASS_TO_PASS)} PASS_TO_PASS"
        )
        row = instance.model_dump()
        row["FAIL_TO_PASS"] = json.dumps(row["FAIL_TO_PASS"])  # the classic schema's string form
        row["PASS_TO_PASS"] = json.dumps(row["PASS_TO_PASS"])
        rows.append(row)
    INSTANCES_FILE.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
