"""Every text an episode shows the model, in one object: ours by default, CWM's own on request.

`Texts.ours()` fills the project's templates (`templates/*.txt`, our wording in CWM's shapes).
`cwm_agent.prompts.release.load_release_texts(path)` reads CWM's exact texts from a checkout of
its release. The loop only ever asks a `Texts`, so the two are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cwm_agent.prompts import templates
from cwm_agent.prompts.parse import OUR_MESSAGES, ParseMessages


@dataclass(frozen=True)
class Texts:
    system: Callable[[float, int, int, Sequence[str]], str]
    """(session_timeout, context_size, max_turns, tools) -> the system message."""
    issue: Callable[[str, str], str]
    """(issue text, repository root) -> the user message of an issue-solving episode."""
    test_generation: Callable[[str, str], str]
    """(issue text, repository root) -> the user message of a test-generation episode."""
    output: Callable[[str], str]
    """A tool's result -> the `<output>` block."""
    budget_template: str
    """The budget block with its placeholders `{remaining_turns}`/`{remaining_tokens}` unfilled (CWM
    counts the observation's tokens with the placeholders in)."""
    budget: Callable[[int, int], str]
    submission: Callable[[str], str]
    """An accepted patch (as read, final newline kept) -> what the submit call answers."""
    test_submission: Callable[[str], str]
    parse: ParseMessages
    source: str = "cwm-agent"
    """Where the texts come from: "cwm-agent", or the path of CWM's release."""

    @classmethod
    def ours(cls) -> Texts:
        return cls(
            system=lambda timeout, context, turns, tools: templates.system_prompt(timeout, context, turns, tools),
            issue=lambda issue, root: templates.issue_prompt(issue, repo_root=root),
            test_generation=lambda issue, root: templates.test_generation_prompt(issue, repo_root=root),
            output=templates.output_block,
            budget_template=templates.load_template("budget"),
            budget=templates.budget_block,
            submission=templates.submission_feedback,
            test_submission=templates.test_submission_feedback,
            parse=OUR_MESSAGES,
        )
