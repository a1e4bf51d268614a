"""The agent's seam to a model: what one request carries, and what a model must answer.

Two implementations: `ModelClient` (HTTP, a vLLM server's OpenAI-compatible API) and `FakeModel`
(in process, scripted replies; for tests of the loop that need neither a server nor a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cwm_agent.model.client import Completion, SamplingParams
from cwm_agent.prompts.render import Message


@dataclass
class Prompt:
    """One request's prompt, in every form a model may want it."""

    text: str
    """The whole dialogue rendered as CWM text, ending with the generation prompt."""
    ids: list[int] | None = None
    """The same as token ids built piece by piece (CWM's boundaries), when token-exact prompts are on."""
    messages: list[Message] = field(default_factory=list)
    """The same as chat messages with CWM's roles (for servers asked through /v1/chat/completions)."""
    rollout: str | None = None
    """Names the dialogue, so a server (or a router) can keep one rollout's requests together."""


@runtime_checkable
class Model(Protocol):
    """What the loop needs of a model."""

    async def generate(self, prompt: Prompt, sampling: SamplingParams) -> Completion:
        """One reply to `prompt`. `Completion.token_ids` holds the sampled ids when the model gives them."""

    async def encode(self, text: str) -> list[int]:
        """Token ids of plain `text` (special-token strings in it are text, no BOS)."""

    async def decode(self, ids: list[int]) -> str:
        """Text of token ids."""

    async def supports_token_ids(self) -> bool:
        """Whether `generate` takes `Prompt.ids` and returns the reply's ids."""

    @property
    def exact_tokenizer(self) -> bool:
        """True when `encode` is CWM's tokenizer itself (local), so special-token strings in text stay
        text; False when it asks a server, which would read them as special tokens."""
