"""Selection strategies: one function from an instance's candidates (and their results) to a choice.

A strategy is any object with a `name`, a `needs_execution` flag, and
`__call__(instance, execution) -> Choice`: `instance` is the instance's `InstanceCandidates`
(distinct patches with their rollouts, votes and tokens; generated tests; the issue text), and
`execution` its `Execution` (regression tests, kept and top generated tests, each patch's results)
when `needs_execution` is true, else None. `Choice.patch_id` names one of `instance.candidates`,
or None for an empty prediction.

Plugging in your own, e.g. a learned verifier behind an endpoint:

    # myverifier.py
    class RewardModel:
        name = "reward-model"
        needs_execution = False          # True to also see the test results
        needs_problem_statement = True   # fill instance.problem_statement from the dataset
        def __call__(self, instance, execution):
            scores = {c.patch_id: post(URL, issue=instance.problem_statement, patch=c.patch)
                      for c in instance.candidates}
            best = max(scores, key=scores.get, default=None)
            return Choice(best, f"highest reward {scores.get(best)}", {"reward": scores})
    reward_model = RewardModel()

    cwm-agent swebench select --run DIR --strategy myverifier:reward_model -o preds.jsonl

A plain function works too (`needs_execution` is then read from the function, default true).
With `needs_execution`, `instance.problem_statement` is always filled in.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from cwm_agent.errors import UserError
from cwm_agent.tts.candidates import Candidate, InstanceCandidates
from cwm_agent.tts.execute import Execution


class StrategyError(UserError):
    """No strategy by that name, or a plug-in that cannot be loaded."""


@dataclass
class Choice:
    patch_id: str | None
    """One of the instance's candidates, or None: submit an empty patch."""
    reason: str
    scores: dict[str, Any] = field(default_factory=dict)
    """What the strategy computed per candidate (for the why-record)."""


@runtime_checkable
class Strategy(Protocol):
    name: str
    needs_execution: bool

    def __call__(self, instance: InstanceCandidates, execution: Execution | None) -> Choice: ...


def _by_votes(cands: list[Candidate]) -> list[Candidate]:
    """Most rollouts first; then fewest tokens; then the earliest rollout (deterministic)."""
    return sorted(cands, key=lambda c: (-c.votes, c.tokens, c.rollout))


class Majority:
    """Plain majority voting over non-empty normalised patches (ties: fewest tokens, then earliest rollout)."""

    name = "majority"
    needs_execution = False

    def __call__(self, instance: InstanceCandidates, execution: Execution | None) -> Choice:
        if not instance.candidates:
            return Choice(None, "no rollout produced a non-empty patch")
        ranked = _by_votes(instance.candidates)
        best = ranked[0]
        tied = [c for c in ranked if c.votes == best.votes]
        n = len(instance.patches)
        reason = f"produced by {best.votes} of {n} rollouts, the most"
        if len(tied) > 1:
            reason += f"; tied with {len(tied) - 1} other patch(es) on votes, fewest tokens ({best.tokens})"
        return Choice(best.patch_id, reason, {"votes": {c.patch_id: c.votes for c in ranked}})


class CWMSelect:
    """CWM's rule: the patch passing the most tests (regression + top generated); ties → the majority
    patch; still tied → the fewest tokens. A patch that does not apply passes nothing and ranks below
    every patch that applies. Without execution results (the instance could not be run), majority."""

    name = "cwm"
    needs_execution = True

    def __call__(self, instance: InstanceCandidates, execution: Execution | None) -> Choice:
        if not instance.candidates:
            return Choice(None, "no rollout produced a non-empty patch")
        if execution is None or execution.error:
            choice = Majority()(instance, None)
            why = execution.error if execution is not None else "no execution results"
            return Choice(choice.patch_id, f"majority fallback ({why}): {choice.reason}", choice.scores)
        reg, top = execution.regression_tests, execution.top
        scores: dict[str, dict[str, Any]] = {}
        for c in instance.candidates:
            r = execution.results.get(c.patch_id)
            applied = bool(r and r.applied)
            passed_reg = r.regression_passed(reg) if applied else 0
            passed_gen = r.generated_passed(top) if applied else 0
            scores[c.patch_id] = {
                "applied": applied,
                "regression": passed_reg,
                "generated": passed_gen,
                "tests": passed_reg + passed_gen,
                "votes": c.votes,
                "tokens": c.tokens,
            }

        def tests(c: Candidate) -> tuple[bool, int]:
            return scores[c.patch_id]["applied"], scores[c.patch_id]["tests"]

        ranked = sorted(
            instance.candidates, key=lambda c: (not tests(c)[0], -tests(c)[1], -c.votes, c.tokens, c.rollout)
        )
        best = ranked[0]
        s = scores[best.patch_id]
        total = len(reg) + len(top)
        if not s["applied"]:
            reason = "no candidate applies; "
        else:
            reason = (
                f"passes {s['tests']} of {total} tests ({s['regression']}/{len(reg)} regression, "
                f"{s['generated']}/{len(top)} generated)"
            )
        same_tests = [c for c in ranked if tests(c) == tests(best)]
        if len(same_tests) == 1:
            reason += ", the most" if s["applied"] else "the most frequent patch"
        else:
            same_votes = [c for c in same_tests if c.votes == best.votes]
            if len(same_votes) == 1:
                reason += f"; tied with {len(same_tests) - 1} other(s), the majority patch ({best.votes} rollouts)"
            else:
                reason += (
                    f"; tied with {len(same_votes) - 1} other(s) on tests and votes ({best.votes} rollouts each),"
                    f" the fewest tokens ({best.tokens})"
                )
        return Choice(best.patch_id, reason, scores)


STRATEGIES: dict[str, Strategy] = {"majority": Majority(), "cwm": CWMSelect()}


class _Function:
    def __init__(self, fn: Any, name: str) -> None:
        self.fn, self.name = fn, name
        self.needs_execution = bool(getattr(fn, "needs_execution", True))

    def __call__(self, instance: InstanceCandidates, execution: Execution | None) -> Choice:
        return self.fn(instance, execution)


def load_strategy(spec: str) -> Strategy:
    """A built-in strategy by name, or `module:attribute` (an object with the Strategy shape, or a function)."""
    if spec in STRATEGIES:
        return STRATEGIES[spec]
    if ":" not in spec:
        raise StrategyError(
            f"--strategy {spec}: unknown; use {', '.join(STRATEGIES)} or MODULE:ATTRIBUTE for your own strategy."
        )
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StrategyError(f"--strategy {spec}: cannot load it ({exc}).") from None
    if isinstance(obj, Strategy):
        return obj
    if callable(obj):
        return _Function(obj, getattr(obj, "name", attr))
    raise StrategyError(f"--strategy {spec}: {attr} is neither a strategy object nor a function.")
