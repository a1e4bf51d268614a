"""A scripted model whose episodes end every way a review must show: resolved, unresolved, errored, unfinished.

`ReviewPolicy(instances)` answers generation requests like `GoldPolicy`, but each (instance, rollout)
follows its own plan (`policy.plan`), the rollout read from the request's seed (the run's `--seed` +
rollout, so pass `--seed SEED`):
- `gold`: the instance's own fix (resolved);
- `wrong`: first a reply with no `</think>` (a format error), then a new module, created, edited and
  submitted (unresolved);
  its thinking holds markup a report must print as text, never run;
- `error`: HTTP 400 at once (the episode ends in a model error);
- `wander`: `ls` until the turn limit (unfinished: never graded).
A test-generation episode (`--test-rollouts`) writes and submits a small `test_issue.py`.
"""

from __future__ import annotations

from gold_policy import ASSISTANT_HEADER, GoldPolicy

from cwm_agent.model.scripted_server import Fault, ScriptedRequest

SEED = 100
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def gold_steps(patch: str) -> list[str]:
    """The gold fix applied and submitted; the patch file keeps its final newline whether or not the
    create tool adds one."""
    return [
        f"I will write the fix.\n</think>\n<tool: create>\n/tmp/gold.patch\n{patch}\n</tool>",
        "Apply it.\n</think>\n<tool: bash>\n"
        "cd /testbed && git apply /tmp/gold.patch && git diff > /tmp/fix.patch\n</tool>",
        "Submit.\n</think>\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\nThe fix is submitted.",
    ]


def wrong_steps() -> list[str]:
    return [
        f"The note goes in a new module. {HOSTILE}\n<tool: bash>\nls\n</tool>",
        "A new module.\n</think>\n<tool: create>\n/testbed/review_note.py\nREVIEWED = False\n</tool>",
        "Flip it.\n</think>\n<tool: edit>\n/testbed/review_note.py\n<<<<<<< SEARCH\nREVIEWED = False\n"
        "=======\nREVIEWED = True\n>>>>>>> REPLACE\n</tool>",
        "The patch.\n</think>\n<tool: bash>\ncd /testbed && git add -N review_note.py && git diff > /tmp/fix.patch"
        " && cat /tmp/fix.patch\n</tool>",
        "Submit it.\n</think>\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\nSubmitted.",
    ]


TEST_FILE = 'print("Issue reproduced")\n'


def test_steps() -> list[str]:
    return [
        f"A test that prints the verdict.\n</think>\n<tool: create>\n/testbed/test_issue.py\n{TEST_FILE}\n</tool>",
        "Submit it.\n</think>\n<tool: submit>\ntest_issue.py\n</tool>",
        "Done.\n</think>\nThe test prints its verdict.",
    ]


def wander_step(turn: int) -> str:
    return f"Look around (step {turn}).\n</think>\n<tool: bash>\nls /testbed | head -3\n</tool>"


class ReviewPolicy(GoldPolicy):
    def __init__(self, instances) -> None:
        super().__init__(instances)
        self.plan: dict[tuple[str, int], str] = {}

    def __call__(self, request: ScriptedRequest):
        instance = self.instance_for(request.prompt)
        if instance is None:
            return Fault.http(400, "review policy: the prompt holds none of the known issues")
        rollout = int(request.body.get("seed") or SEED) - SEED
        how = self.plan.get((instance.instance_id, rollout), "gold")
        turn = request.prompt.count(ASSISTANT_HEADER) - 1
        if "test_issue.py" in request.prompt.split(ASSISTANT_HEADER, 1)[0]:
            return test_steps()[min(turn, 2)]
        if how == "error":
            return Fault.http(400, f"review policy: told to fail {instance.instance_id}")
        if how == "wander":
            return wander_step(turn)
        steps = gold_steps(instance.patch) if how == "gold" else wrong_steps()
        return steps[min(turn, len(steps) - 1)]
