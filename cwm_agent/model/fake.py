"""An in-process model: scripted replies, no server, no GPU (the `Model` protocol's other side).

Loop and tool tests run on it with the local sandbox backend in milliseconds. It behaves as vLLM
does where the loop can tell: a reply ends with the <|eot_id|> id unless `max_tokens` cut it
("length"), usage counts prompt and reply ids, and id prompts are taken as they are. It tokenizes
with CWM's BPE when the tiktoken file is installed, else with the scripted server's simple
deterministic tokenizer (same counts for the same text, which is what the loop's tests need).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cwm_agent.model.base import Prompt
from cwm_agent.model.client import Completion, ModelError, SamplingParams
from cwm_agent.model.scripted_server import ScriptTokenizer, encode_text_prompt
from cwm_agent.model.tokenizer import TokenizerNotFoundError, load_tokenizer

EOT_ID = 128009

Policy = Callable[[Prompt], str]


def default_tokenizer() -> Any:
    """CWM's tokenizer when its file is installed, else the deterministic stand-in."""
    try:
        return load_tokenizer()
    except TokenizerNotFoundError:
        return ScriptTokenizer()


class FakeModel:
    """Answers each request with the next scripted reply (or `policy(prompt)`); records every prompt."""

    def __init__(self, replies: Sequence[str] | Policy, tokenizer: Any = None) -> None:
        self._policy = replies if callable(replies) else None
        self._replies = list(replies) if not callable(replies) else []
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.prompts: list[Prompt] = []
        self.id_prompts = True
        """Whether to take id prompts (False plays a server without them)."""

    @property
    def exact_tokenizer(self) -> bool:
        return not isinstance(self.tokenizer, ScriptTokenizer)

    async def supports_token_ids(self) -> bool:
        return self.id_prompts

    async def encode(self, text: str) -> list[int]:
        if isinstance(self.tokenizer, ScriptTokenizer):
            return self.tokenizer.encode(text)
        return self.tokenizer.encode(text)

    async def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        return list(prompt.ids) if prompt.ids is not None else encode_text_prompt(self.tokenizer, prompt.text)

    async def generate(self, prompt: Prompt, sampling: SamplingParams) -> Completion:
        # A copy: the dialogue's lists go on growing after the request.
        prompt = Prompt(text=prompt.text, ids=None if prompt.ids is None else list(prompt.ids),
                        messages=list(prompt.messages), rollout=prompt.rollout)  # fmt: skip
        self.prompts.append(prompt)
        if self._policy is not None:
            text = self._policy(prompt)
        elif self._replies:
            text = self._replies.pop(0)
        else:
            raise ModelError("the fake model ran out of scripted replies")
        ids = await self.encode(text)
        finish = "stop"
        if len(ids) >= sampling.max_tokens:
            ids, finish = ids[: sampling.max_tokens], "length"
            text = await self.decode(ids)
        else:
            ids = ids + [EOT_ID]
        prompt_tokens = len(self._prompt_ids(prompt))
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(ids),
            cached_tokens=None,
            latency=0.0,
            token_ids=ids,
        )
