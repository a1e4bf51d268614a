"""SWE-bench instances as agent tasks: the bridge from a dataset row to the shared pipeline."""

from __future__ import annotations

from cwm_agent.agent.task import Task
from cwm_agent.swebench.dataset import SWEBenchInstance
from cwm_agent.swebench.images import REPO_DIR, startup_commands


def instance_task(instance: SWEBenchInstance, image: str, kind: str = "patch") -> Task:
    """The agent's task for `instance` in `image`: the repository is already at /testbed, and its
    history past the base commit is scrubbed before the first turn so the fix can't be read from git."""
    return Task(
        task_id=instance.instance_id,
        problem_statement=instance.problem_statement,
        kind=kind,
        image=image,
        repo_dir=REPO_DIR,
        base_commit=instance.base_commit,
        scrub_history=True,
        startup_commands=startup_commands(),
    )
