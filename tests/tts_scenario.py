"""A test-time-scaling scenario on the local instances, played by a scripted model in `swebench run`.

Seven patch rollouts and a few test rollouts per instance, with known outcomes:

- inflection: a wrong patch (applies, fixes nothing) from rollouts 0-2, the gold patch from 3 and
  the same with whitespace changes from 4, a patch that does not apply from 5, an empty one from 6.
  Generated tests: a good one (rollouts 0 and 1), a wrong one that reproduces on the fix too (2),
  one that does not reproduce (3), one that does not parse (4).
- six: the gold patch (0, 1), another correct patch (2), a harmless wrong one (3), empty (4-6).
  Generated tests: one that does not reproduce, one without 'Issue resolved', one printing
  'Other issues': none is kept, so only the regression tests count and the patches tie.
- more-itertools: the gold patch (0, made longer by its thinking), another correct patch (1), a patch
  breaking the existing tests (2-4), empty (5, 6). Generated test: a good one (0).
"""

from __future__ import annotations

from gold_policy import ASSISTANT_HEADER, GoldPolicy

from cwm_agent.model.scripted_server import Fault, ScriptedRequest

INFLECTION, SIX, MORE = "cwm-local__inflection-1", "cwm-local__six-1", "cwm-local__more-itertools-1"
K = 7

_INFL_HEAD = "\n".join([
    "diff --git a/inflection/__init__.py b/inflection/__init__.py",
    "index 899d4b4..c18a0b6 100644",
    "--- a/inflection/__init__.py",
    "+++ b/inflection/__init__.py",
    "@@ -222,7 +222,7 @@ def ordinal(number: int) -> str:",
    "         'st'",
    " ",  # a context line that is blank in the file
    '     """',
    "",
])  # fmt: skip
_INFL_TAIL = """\
     if number % 100 in (11, 12, 13):
         return "th"
     else:
"""
INFL_GOLD = _INFL_HEAD + "-    number = int(number)\n+    number = abs(int(number))\n" + _INFL_TAIL
INFL_GOLD_WS = INFL_GOLD.replace("index 899d4b4..c18a0b6", "index 899d4b4..5d0e2f1").replace(
    "+    number = abs(int(number))", "+    number  =  abs(int(number))   "
)
INFL_WRONG = _INFL_HEAD + "-    number = int(number)\n+    number = int(number) if number else 0\n" + _INFL_TAIL
INFL_NOAPPLY = _INFL_HEAD + "-    number = float(number)\n+    number = abs(float(number))\n" + _INFL_TAIL

_SIX_HEAD = """\
diff --git a/six.py b/six.py
--- a/six.py
+++ b/six.py
@@ -883,6 +883,8 @@ def add_metaclass(metaclass):
         orig_vars = cls.__dict__.copy()
         slots = orig_vars.get('__slots__')
         if slots is not None:
"""
_SIX_TAIL = """\
             for slots_var in slots:
                 orig_vars.pop(slots_var)
         orig_vars.pop('__dict__', None)
"""
SIX_GOLD = _SIX_HEAD + "+            if isinstance(slots, str):\n+                slots = [slots]\n" + _SIX_TAIL
SIX_ALT = _SIX_HEAD + "+            if isinstance(slots, str):\n+                slots = (slots,)\n" + _SIX_TAIL
SIX_WRONG = _SIX_HEAD + "+            if isinstance(slots, bytes):\n+                slots = [slots]\n" + _SIX_TAIL

_MORE_HEAD = """\
diff --git a/more_itertools/more.py b/more_itertools/more.py
--- a/more_itertools/more.py
+++ b/more_itertools/more.py
"""
MORE_GOLD = (
    _MORE_HEAD
    + """\
@@ -1333,11 +1333,11 @@ def split_at(iterable, pred, maxsplit=-1, keep_separator=False):
     for item in it:
         if pred(item):
             yield buf
+            if keep_separator:
+                yield [item]
             if maxsplit == 1:
                 yield list(it)
                 return
-            if keep_separator:
-                yield [item]
             buf = []
             maxsplit -= 1
         else:
"""
)
MORE_ALT = MORE_GOLD.replace(
    "+                yield [item]\n", "+                yield [item]  # the separator, before the rest\n"
)
MORE_BREAKING = (
    _MORE_HEAD
    + """\
@@ -1333,7 +1333,7 @@ def split_at(iterable, pred, maxsplit=-1, keep_separator=False):
     for item in it:
         if pred(item):
-            yield buf
+            yield buf[:1]
             if maxsplit == 1:
                 yield list(it)
                 return
"""
)


def _test(setup: str, check: str) -> str:
    return (
        f"try:\n    {setup}\n    ok = {check}\nexcept Exception:\n    print('Other issues')\nelse:\n"
        "    if ok:\n        print('Issue resolved')\n    else:\n        print('Issue reproduced')\n"
    )


INFL_TEST_GOOD = _test("import inflection", "inflection.ordinal(-1) == 'st'")
INFL_TEST_WRONG = _test("import inflection", "inflection.ordinal(-11) == 'st'")  # -11 is 'th': never resolved
INFL_TEST_NOREPRO = _test("import inflection", "inflection.ordinal(1) == 'st'")
INFL_TEST_SYNTAX = (
    "import inflection\nif inflection.ordinal(-1) == 'st'\n    print('Issue resolved')\nprint('Issue reproduced')\n"
)
SIX_TEST_NOREPRO = _test("import six", "six.PY3 or six.PY2")
SIX_TEST_MISSING = "import six\nprint('Issue reproduced')\n"
SIX_TEST_OTHER = _test("import six_does_not_exist", "True")
MORE_TEST_GOOD = _test(
    "from more_itertools import split_at",
    "list(split_at(range(1, 11), lambda x: x % 3 == 0, maxsplit=2, keep_separator=True))"
    " == [[1, 2], [3], [4, 5], [6], [7, 8, 9, 10]]",
)

PATCHES = {
    INFLECTION: [INFL_WRONG, INFL_WRONG, INFL_WRONG, INFL_GOLD, INFL_GOLD_WS, INFL_NOAPPLY, ""],
    SIX: [SIX_GOLD, SIX_GOLD, SIX_ALT, SIX_WRONG, "", "", ""],
    MORE: [MORE_GOLD, MORE_ALT, MORE_BREAKING, MORE_BREAKING, MORE_BREAKING, "", ""],
}
TESTS = {
    INFLECTION: [INFL_TEST_GOOD, INFL_TEST_GOOD, INFL_TEST_WRONG, INFL_TEST_NOREPRO, INFL_TEST_SYNTAX],
    SIX: [SIX_TEST_NOREPRO, SIX_TEST_MISSING, SIX_TEST_OTHER],
    MORE: [MORE_TEST_GOOD],
}
RESOLVED = {INFLECTION: {3, 4}, SIX: {0, 1, 2}, MORE: {0, 1}}
"""Rollouts whose patch the official evaluation resolves (by construction)."""


SEED = 0
PAD = {(MORE, 0): "Let me think this through at length. " * 80}
"""Thinking that makes a rollout longer (so its patch loses the fewest-tokens tie-break)."""


def _patch_steps(patch: str, pad: str) -> list[str]:
    """Write the patch; where it applies, submit `git diff` of the result (as an agent would), else the file."""
    return [
        f"{pad}I will write the change.\n</think>\n<tool: create>\n/tmp/fix.patch\n{patch}\n</tool>",
        f"{pad}Apply it.\n</think>\n<tool: bash>\ncd /testbed && if git apply /tmp/fix.patch; then "
        "git diff > /tmp/fix.patch; fi; true\n</tool>",
        f"{pad}Submit.\n</think>\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        f"{pad}Done.\n</think>\nSubmitted.",
    ]


def _test_steps(source: str) -> list[str]:
    return [
        f"A reproduction test.\n</think>\n<tool: create>\n/testbed/test_issue.py\n{source}</tool>",
        "Submit it.\n</think>\n<tool: submit>\n/testbed/test_issue.py\n</tool>",
        "Done.\n</think>\nThe test is submitted.",
    ]


class TTSPolicy(GoldPolicy):
    """Plays the scenario: the instance from the issue text, the rollout from the request's seed (run with
    `--seed SEED`), the episode's kind from its task text. An empty patch or a missing test is an episode
    that never submits (it ends on the turn limit, so CWM would not grade it)."""

    def __call__(self, request: ScriptedRequest):
        instance = self.instance_for(request.prompt)
        if instance is None:
            return Fault.http(400, "tts policy: the prompt holds none of the known issues")
        iid = instance.instance_id
        rollout = int(request.body.get("seed") or SEED) - SEED
        turn = request.prompt.count(ASSISTANT_HEADER) - 1
        if "test_issue.py" in request.prompt.split(ASSISTANT_HEADER, 1)[0]:
            tests = TESTS[iid]
            steps = _test_steps(tests[rollout]) if rollout < len(tests) else None
        else:
            patch = PATCHES[iid][rollout]
            steps = _patch_steps(patch, PAD.get((iid, rollout), "")) if patch else None
        if steps is None:
            return f"Look around (step {turn}).\n</think>\n<tool: bash>\nls /testbed | head -3\n</tool>"
        return steps[min(turn, len(steps) - 1)]
