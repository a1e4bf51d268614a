"""CWM's chat format: messages -> the exact text (or text pieces) the model was trained on.

Layout, byte for byte:

    <|begin_of_text|>
    <|start_header_id|>ROLE<|end_header_id|>\\n\\nBODY<|eot_id|>      (per message)
    <|start_header_id|>assistant<|end_header_id|>\\n\\n<think>\\n     (generation prompt)

The agent loop never re-renders a dialogue: each request is the previous prompt + the
reply + the new messages (`render_continuation`), so the server's prefix cache always hits
and earlier thinking stays in the history exactly as generated.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict, field_validator

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
# Text (not a special token) that follows every header; tokenized on its own.
HEADER_SEPARATOR = "\n\n"
THINK_START = "<think>\n"
THINK_END = "</think>"

# Special tokens of the chat format. A message body that contains one of these strings is
# tokenized as plain text by CWM's own code, but a server given the prompt as text would
# read it as the special token: see `find_special_tokens`.
SPECIAL_TOKENS = (BOS, EOS, PAD, START_HEADER, END_HEADER, EOM, EOT)

_ROLE_RE = re.compile(r"(system|user|assistant|tool: [A-Za-z0-9_.\-]+)")


class Message(BaseModel):
    """One chat message. `role` is system, user, assistant, or `tool: NAME` for a tool's result."""

    model_config = ConfigDict(frozen=True)

    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if not _ROLE_RE.fullmatch(role):
            raise ValueError(f"role must be system, user, assistant or 'tool: NAME', got {role!r}")
        return role

    @classmethod
    def system(cls, content: str) -> Message:
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, content: str) -> Message:
        return cls(role="assistant", content=content)

    @classmethod
    def tool(cls, name: str, content: str) -> Message:
        return cls(role=f"tool: {name}", content=content)

    @property
    def tool_name(self) -> str | None:
        return self.role[len("tool: ") :] if self.role.startswith("tool: ") else None


class Piece(NamedTuple):
    """A run of prompt text that is tokenized on its own: a special token, or plain text."""

    text: str
    is_special: bool


def _body(message: Message, *, strip_assistant: bool, is_prefix: bool) -> str:
    # CWM strips system and user bodies, never tool bodies (a tool's output is kept whole),
    # and never an open assistant prefix (stripping "<think>\n" would change the prompt).
    if message.role in ("system", "user"):
        return message.content.strip()
    if message.role == "assistant" and strip_assistant and not is_prefix:
        return message.content.strip()
    return message.content


def _header_pieces(role: str) -> list[Piece]:
    return [
        Piece(START_HEADER, True),
        Piece(role, False),
        Piece(END_HEADER, True),
        Piece(HEADER_SEPARATOR, False),
    ]


def _message_pieces(message: Message, *, strip_assistant: bool, is_prefix: bool) -> list[Piece]:
    pieces = _header_pieces(message.role)
    body = _body(message, strip_assistant=strip_assistant, is_prefix=is_prefix)
    if body:
        pieces.append(Piece(body, False))
    if not is_prefix:
        pieces.append(Piece(EOT, True))
    return pieces


def generation_prompt_pieces(reasoning: bool = True) -> list[Piece]:
    pieces = _header_pieces("assistant")
    if reasoning:
        pieces.append(Piece(THINK_START, False))
    return pieces


def _dialogue_pieces(messages: Sequence[Message], *, strip_assistant: bool, open_last: bool) -> list[Piece]:
    pieces: list[Piece] = []
    for i, message in enumerate(messages):
        is_last = i == len(messages) - 1
        is_prefix = is_last and open_last and message.role == "assistant"
        pieces += _message_pieces(message, strip_assistant=strip_assistant, is_prefix=is_prefix)
    return pieces


def render_pieces(messages: Sequence[Message], reasoning: bool = True, *, bos: bool = True) -> list[Piece]:
    """The pieces of `render_prompt(messages, reasoning)`, in order.

    Tokenizing each piece on its own (special pieces to their single id) and concatenating
    reproduces the token boundaries CWM was trained with; tokenizing the joined text whole
    can merge across a message boundary.
    """
    pieces = [Piece(BOS, True)] if bos else []
    pieces += _dialogue_pieces(messages, strip_assistant=False, open_last=True)
    if not messages or messages[-1].role != "assistant":
        pieces += generation_prompt_pieces(reasoning)
    return pieces


def continuation_pieces(reply: str, new_messages: Sequence[Message], reasoning: bool = True) -> list[Piece]:
    """The pieces of `render_continuation(...)`; the first is the reply (plain text, or absent if empty)."""
    reply = reply.removesuffix(EOT)
    pieces = [Piece(reply, False)] if reply else []
    pieces.append(Piece(EOT, True))
    pieces += render_pieces(new_messages, reasoning, bos=False)
    return pieces


def _join(pieces: Sequence[Piece]) -> str:
    return "".join(p.text for p in pieces)


def render_message(message: Message) -> str:
    """One closed message as it appears inside a prompt (system/user bodies stripped)."""
    return _join(_message_pieces(message, strip_assistant=False, is_prefix=False))


def generation_prompt(reasoning: bool = True) -> str:
    """What a prompt ends with to make the model answer: the assistant header (+ `<think>\\n`)."""
    return _join(generation_prompt_pieces(reasoning))


def render_prompt(messages: Sequence[Message], reasoning: bool = True) -> str:
    """BOS + every message + the generation prompt.

    Assistant bodies are kept exactly as given (they are raw replies, and the prompt must
    extend the previous one byte for byte). If the last message is an assistant message it
    is an open generation prefix: rendered without `<|eot_id|>` and with no further
    generation prompt (so `reasoning` does not add `<think>\\n` to it).
    """
    return _join(render_pieces(messages, reasoning))


def render_continuation(reply: str, new_messages: Sequence[Message], reasoning: bool = True) -> str:
    """What to append to the previous prompt after the model answered `reply`.

    reply + `<|eot_id|>` + the new messages + the generation prompt. A reply that already
    ends with `<|eot_id|>` (server asked to include the stop string) is not closed twice.
    Invariant: render_prompt(history) + render_continuation(reply, new) ==
    render_prompt(history + [assistant(prefix + reply)] + new), where prefix is `<think>\\n`
    in reasoning mode and empty otherwise.
    """
    return _join(continuation_pieces(reply, new_messages, reasoning))


def render_training(messages: Sequence[Message], *, open_last: bool = False) -> str:
    """A finished dialogue as CWM's training data has it: BOS + messages, no generation prompt.

    System, user and assistant bodies are stripped; tool bodies are not. With `open_last`,
    a final assistant message is a generation prefix: kept unstripped and left unclosed.
    """
    pieces = [Piece(BOS, True)]
    pieces += _dialogue_pieces(messages, strip_assistant=True, open_last=open_last)
    return _join(pieces)


def find_special_tokens(text: str) -> list[str]:
    """The special-token strings that occur in `text` (e.g. a tool's output), in first-seen order.

    Such text is only safe to send when the prompt goes out as token ids built piece by
    piece; sent as text, the server would parse it as real special tokens.
    """
    found = [(text.find(tok), tok) for tok in SPECIAL_TOKENS if tok in text]
    return [tok for _, tok in sorted(found)]


_SPECIAL_TOKEN_RE = re.compile(r"<\|([A-Za-z0-9_]+)\|>")


def defuse_special_tokens(text: str) -> str:
    """`text` with every special-token-shaped string (`<|eot_id|>`, `<|reserved_..._7|>`, ...)
    broken as `<\\|eot_id|>`, so that a tool's output or an issue sent inside a text prompt cannot
    end a message or open a header: the server would parse the bare string as a real special token.
    """
    return _SPECIAL_TOKEN_RE.sub(lambda m: "<\\|" + m.group(1) + "|>", text)


def message_pieces(message: Message) -> list[Piece]:
    """One closed message (header, body, `<|eot_id|>`) as pieces: what CWM counts as a message's tokens."""
    return _message_pieces(message, strip_assistant=False, is_prefix=False)
