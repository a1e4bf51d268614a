"""The context the model sees, kept as CWM's environment keeps it.

The dialogue only ever grows: each request is the previous context + the reply as generated +
the new message + the generation prompt (`<|start_header_id|>assistant<|end_header_id|>\\n\\n`
and `<think>\\n` in reasoning mode), never re-rendered, so the server's prefix cache hits and
earlier thinking stays as it was written. It is kept three ways at once: as CWM text, as token ids
built piece by piece (when token-exact prompts are on: header, role, body and end tokens each
tokenized on their own, the reply's ids as sampled), and as chat messages (for `api: chat`).

`tokens` is CWM's count of the context: the first prompt's tokens, + each reply's tokens (its end
token included), + each answer's tokens (the message, the generation prompt, and an end token the
reply lacked when it was cut by the length limit). The turn and budget rules read it.
"""

from __future__ import annotations

from typing import Literal

from cwm_agent.model.base import Model, Prompt
from cwm_agent.model.client import Completion
from cwm_agent.model.tokenizer import SPECIAL_IDS
from cwm_agent.prompts.render import (
    EOT,
    THINK_START,
    Message,
    Piece,
    defuse_special_tokens,
    message_pieces,
    render_pieces,
)
from cwm_agent.prompts.templates import TRUNCATION_MARK

EOT_ID = SPECIAL_IDS[EOT]
_SHORT = 64


class Dialogue:
    """One episode's context over one model."""

    def __init__(self, model: Model, *, reasoning: bool = True, token_ids: bool = False, rollout: str | None = None):
        self.model = model
        self.reasoning = reasoning
        self.rollout = rollout
        self.text = ""
        self.ids: list[int] | None = [] if token_ids else None
        self.messages: list[Message] = []
        self.tokens = 0
        self._cache: dict[str, int] = {}
        self._recent: dict[str, list[int]] = {}
        self._abbrev: list[int] | None = None
        self._reply_closed = True

    # -- what a request carries ---------------------------------------------------------------

    def prompt(self) -> Prompt:
        """The next request's prompt. Its lists are the dialogue's own (not copied: a context of 100k
        ids is sent every turn); a model that keeps them must copy them."""
        return Prompt(text=self.text, ids=self.ids, messages=self.messages, rollout=self.rollout)

    # -- building it ---------------------------------------------------------------------------

    async def open(self, system: Message, user: Message) -> None:
        """The first prompt: BOS, the system and user messages, the generation prompt."""
        pieces = render_pieces([system, user], self.reasoning)
        await self._append(pieces)
        self.messages = [system, user]

    async def add_reply(self, completion: Completion) -> int:
        """Append the model's reply exactly as generated; returns its tokens (CWM's count)."""
        text = completion.text.removesuffix(EOT)
        if completion.token_ids is not None:
            count = len(completion.token_ids)
        elif completion.completion_tokens is not None:
            count = completion.completion_tokens
        else:
            count = len(await self.model.encode(text)) + (completion.finish_reason == "stop")
        self.text += text
        if completion.token_ids is not None:
            self._reply_closed = bool(completion.token_ids) and completion.token_ids[-1] == EOT_ID
        else:
            self._reply_closed = completion.finish_reason == "stop"
        if self.ids is not None:
            self.ids += completion.token_ids if completion.token_ids is not None else await self._encode(text)
        self.tokens += count
        prefix = THINK_START if self.reasoning else ""
        self.messages.append(Message(role="assistant", content=prefix + text))
        return count

    async def answer(self, message: Message) -> list[int] | None:
        """Close the reply and append `message` + the generation prompt; returns the ids appended (id mode).

        A reply that did not end with `<|eot_id|>` (cut by the length limit, or ended by another stop
        token) gets one here, counted with the answer, as CWM does."""
        added: list[int] = []
        if not self._reply_closed:
            added.append(EOT_ID)
        pieces = render_pieces([message], self.reasoning, bos=False)
        if self.ids is not None:
            added += await self._encode_pieces(pieces)
            self.ids += added
            self.tokens += len(added)
        else:
            self.tokens += len(added) + await self.count_pieces(pieces)
        self.text += EOT + "".join(p.text for p in pieces)
        self.messages.append(message)
        self._reply_closed = True
        return added if self.ids is not None else None

    async def _append(self, pieces: list[Piece]) -> None:
        self.text += "".join(p.text for p in pieces)
        if self.ids is not None:
            ids = await self._encode_pieces(pieces)
            self.ids += ids
            self.tokens += len(ids)
        else:
            self.tokens += await self.count_pieces(pieces)

    # -- counting and cutting ------------------------------------------------------------------

    async def _encode(self, text: str) -> list[int]:
        """Ids of plain text, remembered for the last few texts: a turn encodes its answer's body up to
        three times (to count, to cut, to append), and a server's /tokenize is a round trip each."""
        if not text:
            return []
        ids = self._recent.get(text)
        if ids is None:
            ids = await self.model.encode(text)
            self._recent[text] = ids
            if len(self._recent) > 8:
                del self._recent[next(iter(self._recent))]
        return ids

    async def _encode_pieces(self, pieces: list[Piece]) -> list[int]:
        out: list[int] = []
        for piece in pieces:
            if piece.is_special:
                out.append(SPECIAL_IDS[piece.text])
            else:
                out += await self._encode(piece.text)
        return out

    async def count_text(self, text: str) -> int:
        if len(text) <= _SHORT:
            cached = self._cache.get(text)
            if cached is None:
                cached = self._cache[text] = len(await self._encode(text))
            return cached
        return len(await self._encode(text))

    async def count_pieces(self, pieces: list[Piece]) -> int:
        total = 0
        for piece in pieces:
            total += 1 if piece.is_special else await self.count_text(piece.text)
        return total

    async def count_message(self, message: Message) -> int:
        """Tokens of one closed message: header, body, end token."""
        return await self.count_pieces(message_pieces(message))

    async def fit(self, message: Message, max_tokens: int, keep: Literal["start", "end"]) -> Message:
        """`message` cut to `max_tokens` tokens in all (header and end token included), as CWM cuts: the
        body's tokens are kept from the start (`keep="start"`, tool results) or the end (the first user
        message), the cut marked with `[...]`, and the kept tokens decoded back to text."""
        total = await self.count_message(message)
        if total <= max_tokens:
            return message
        body = await self._encode(message.content)
        if self._abbrev is None:
            self._abbrev = await self._encode(TRUNCATION_MARK)
        room = max_tokens - (total - len(body)) - len(self._abbrev)
        kept = self._abbrev + body[-room:] if keep == "end" else body[:room] + self._abbrev
        return Message(role=message.role, content=await self.model.decode(kept))

    def safe(self, text: str) -> str:
        """Text from outside (an issue, a tool's output) made safe to put in the prompt: when the prompt
        goes out as text, or ids come from a server's tokenizer, special-token strings in it would be
        read as real special tokens, so they are broken (`<\\|eot_id|>`); CWM's own tokenizer keeps them
        as plain text, so with it they stay as they are."""
        if self.ids is not None and self.model.exact_tokenizer:
            return text
        return defuse_special_tokens(text)
