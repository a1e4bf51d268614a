"""The replayed gold model of the package (`cwm_agent.demo.gold`), as the tests use it."""

from __future__ import annotations

from cwm_agent.demo.gold import ASSISTANT_HEADER, GoldPolicy, gold_steps

__all__ = ["ASSISTANT_HEADER", "GoldPolicy", "gold_steps", "make_policy"]


def make_policy(instances) -> GoldPolicy:
    return GoldPolicy(instances)
