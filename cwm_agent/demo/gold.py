"""A REPLAYED model for SWE-bench-format datasets: every episode submits the instance's gold patch.

It lets `swebench run` (and everything after it: evaluation, reports, test-time scaling) be tried end
to end without a GPU. Behind the scripted OpenAI-compatible server each episode is create → git
apply → git diff → submit → a final reply. The instance is recognised from the issue text in the
prompt and the turn from the number of assistant headers, so any number of episodes run at once.
It is not CWM and says so: its model id is `replayed-gold (scripted, not CWM)`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from cwm_agent.model.scripted_server import Fault, ScriptedRequest
from cwm_agent.swebench.dataset import SWEBenchInstance

MODEL_NAME = "replayed-gold (scripted, not CWM)"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>"


def gold_steps(patch: str) -> list[str]:
    """The replies of one episode (each continues the generation prompt's `<think>`)."""
    return [
        f"I will write the fix.\n</think>\n<tool: create>\n/tmp/gold.patch\n{patch}\n</tool>",
        "Apply it and write the patch.\n</think>\n<tool: bash>\n"
        "cd /testbed && git apply /tmp/gold.patch && git diff > /tmp/fix.patch && wc -l /tmp/fix.patch\n</tool>",
        "Submit.\n</think>\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\nThe fix is submitted.",
    ]


class GoldPolicy:
    """Answers every generation request of an episode of any of `instances` (a ScriptedServer policy).

    `fail`: instance ids whose requests get HTTP 400 (the client does not retry it, so the episode
    ends in a model error at once). `seen`: the instance id of each generation request, in order.
    A prompt of no known instance gets a 400 too.
    """

    def __init__(self, instances: Sequence[SWEBenchInstance]) -> None:
        self.instances = list(instances)
        self.fail: set[str] = set()
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def instance_for(self, prompt: str) -> SWEBenchInstance | None:
        # The first assistant header ends the system and user messages: the issue is in there.
        head = prompt.split(ASSISTANT_HEADER, 1)[0]
        return next((i for i in self.instances if i.problem_statement.strip()[:200] in head), None)

    def __call__(self, request: ScriptedRequest):
        instance = self.instance_for(request.prompt or "")
        if instance is None:
            return Fault.http(400, "replayed gold model: the prompt holds none of the dataset's issues")
        with self._lock:
            self.seen.append(instance.instance_id)
        if instance.instance_id in self.fail:
            return Fault.http(400, f"replayed gold model: told to fail {instance.instance_id}")
        turn = (request.prompt or "").count(ASSISTANT_HEADER) - 1
        steps = gold_steps(instance.patch)
        return steps[min(turn, len(steps) - 1)]
