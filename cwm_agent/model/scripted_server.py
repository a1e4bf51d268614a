"""A scripted OpenAI-compatible server (vLLM-shaped) for tests and demos; standard library only.

It serves real HTTP on 127.0.0.1: GET /v1/models, GET /health, POST /v1/completions,
POST /v1/chat/completions, POST /tokenize and POST /detokenize. Replies come from a script (in
order) or a policy function. Every request is recorded; faults (latency, HTTP errors, dropped
connections, truncated replies) can be scripted or injected; token counts come from a simple
deterministic tokenizer (`ScriptTokenizer`, the default) or, with `tokenizer=load_tokenizer()`, CWM's
real BPE; `usage.prompt_tokens_details.cached_tokens` is what vLLM's prefix cache would hit: the
longest token prefix shared with an earlier prompt + reply.

Token ids, as vLLM >= 0.10.2 does them: a completions `prompt` may be a list of ids (used as they are,
no BOS added), and `"return_token_ids": true` puts `prompt_token_ids` and `token_ids` (the reply's ids,
ending with the stop id: <|eot_id|> for a reply that ended by itself or on the "<|eot_id|>" stop string)
on each choice. `ids_api` plays older or other servers. Every id prompt is checked against its
rollout: it must extend the previous id request's prompt + one of its replies' `token_ids`. A rollout
is named by the request's OpenAI `user` field (`ModelClient.complete_ids(rollout=...)`); requests
without one form one rollout. A prompt that does not extend is recorded in `prefix_violations`, and
answered HTTP 400 when `reject_prefix_violations` is set.

Run standalone: `python -m cwm_agent.model.scripted_server --replies FILE --port N` (FILE: a JSON
or YAML list of replies, each a string or a mapping as `parse_entry` accepts).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

# Special tokens with CWM's ids; any other <|...|> piece gets a fresh id above them.
SPECIAL_IDS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|pad|>": 128004,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
}
# A special token, a word, or any single other character (whitespace included): simple and
# deterministic, and like a real tokenizer it can split differently across a concatenation point.
_PIECE_RE = re.compile(r"<\|[A-Za-z0-9_:. -]{1,64}\|>|\w+|.", re.DOTALL)
_SPECIAL_SPLIT_RE = re.compile(r"(<\|[A-Za-z0-9_]+\|>)")
VLLM_DEFAULT_MAX_TOKENS = 16

FaultKind = Literal["status", "drop", "truncate", "malformed", "latency"]


@dataclass
class Reply:
    """A scripted reply: the model's text before any stop string; `latency` seconds before answering."""

    text: str
    finish_reason: str = "stop"
    latency: float = 0.0


@dataclass
class Fault:
    """A failure for one request.

    status: answer HTTP `status` (500, 503, 429...) with an error body; drop: close the connection
    without answering; truncate: send part of the body then close; malformed: a complete HTTP reply
    whose JSON is cut; latency: only wait `latency` seconds, then answer normally.
    """

    kind: FaultKind
    status: int = 500
    latency: float = 0.0
    message: str = "injected fault"

    @classmethod
    def http(cls, status: int, message: str = "injected fault") -> Fault:
        return cls("status", status=status, message=message)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def truncate(cls) -> Fault:
        return cls("truncate")

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("latency", latency=seconds)


Entry = str | Reply | Fault | dict


def parse_entry(entry: Entry) -> Reply | Fault:
    """A script entry: a string (the reply text), a Reply or Fault, or a mapping:
    {"text": ..., "finish_reason": "stop"|"length", "latency": s}, {"fault": "http_500"|"http_503"|
    "http_429"|"drop"|"truncate"|"malformed"}, {"status": 503, "message": ...} or {"latency": s} alone."""
    if isinstance(entry, (Reply, Fault)):
        return entry
    if isinstance(entry, str):
        return Reply(entry)
    if not isinstance(entry, dict):
        raise ValueError(f"a script entry must be a string or a mapping, not {type(entry).__name__}")
    latency = float(entry.get("latency", 0.0))
    message = str(entry.get("message", "injected fault"))
    if "text" in entry:
        return Reply(str(entry["text"]), str(entry.get("finish_reason", "stop")), latency)
    if "status" in entry:
        return Fault("status", status=int(entry["status"]), latency=latency, message=message)
    fault = entry.get("fault")
    if isinstance(fault, str):
        if fault.startswith("http_") and fault[5:].isdigit():
            return Fault("status", status=int(fault[5:]), latency=latency, message=message)
        if fault in ("drop", "truncate", "malformed"):
            return Fault(fault, latency=latency)
        raise ValueError(f"unknown fault {fault!r}: use http_NNN, drop, truncate or malformed")
    if "latency" in entry:
        return Fault("latency", latency=latency)
    raise ValueError(f"a script entry needs `text`, `fault`, `status` or `latency`: {entry!r}")


@dataclass
class ScriptedRequest:
    """What a policy sees: `index` counts generation requests from 0."""

    index: int
    endpoint: str
    body: dict[str, Any]
    prompt: str
    messages: list[dict[str, Any]] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The sampling fields of the request (everything but the prompt or messages)."""
        return {k: v for k, v in self.body.items() if k not in ("prompt", "messages")}


@dataclass
class RecordedRequest:
    """One request as the server saw it; `reply` and the token fields are for generation requests."""

    endpoint: str
    body: dict[str, Any]
    time: float
    method: str = "POST"
    prompt: str | None = None
    reply: str | None = None
    """The text sent back (after stop strings and max_tokens); None when none was (faults, errors)."""
    status: int = 200
    fault: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    prompt_ids: list[int] | None = None
    """The prompt as token ids (as sent, or as this server tokenized the text)."""
    reply_ids: list[int] | None = None
    """The first choice's ids as `return_token_ids` gives them (the stop id included)."""


@dataclass
class PrefixViolation:
    """An id prompt that does not extend its rollout's previous prompt + reply ids."""

    rollout: str
    request: int
    """Position of the offending request in `requests`."""
    at: int
    """Index of the first id that differs from the closest previous context (its length if the prompt is shorter)."""
    expected: list[int]
    """Up to 8 ids of that context from `at` on."""
    got: list[int]
    """Up to 8 ids of the prompt from `at` on."""

    def describe(self) -> str:
        return (
            f"rollout {self.rollout!r}: the prompt does not extend the previous prompt + reply at id {self.at} "
            f"(expected {self.expected}, got {self.got})"
        )


IdsApi = Literal["return_token_ids", "logprobs", "none", "no_id_prompts"]


class ScriptTokenizer:
    """Deterministic tokenizer: ids are handed out as pieces are first seen (per server)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = dict(SPECIAL_IDS)
        self._pieces: dict[int, str] = {v: k for k, v in SPECIAL_IDS.items()}
        self._next_special = 128200
        self._lock = threading.Lock()

    def pieces(self, text: str) -> list[str]:
        return _PIECE_RE.findall(text)

    def encode(self, text: str) -> list[int]:
        with self._lock:
            out = []
            for piece in _PIECE_RE.findall(text):
                token = self._ids.get(piece)
                if token is None:
                    if piece.startswith("<|") and piece.endswith("|>") and len(piece) > 4:
                        token, self._next_special = self._next_special, self._next_special + 1
                    else:
                        token = len(self._pieces) + 1000
                    self._ids[piece] = token
                    self._pieces[token] = piece
                out.append(token)
            return out

    def decode(self, tokens: Iterable[int]) -> str:
        return "".join(self._pieces.get(t, "") for t in tokens)


def encode_text_prompt(tokenizer: Any, text: str) -> list[int]:
    """A text prompt as vLLM tokenizes it: special-token strings are special tokens, the rest is text."""
    if isinstance(tokenizer, ScriptTokenizer):
        return tokenizer.encode(text)
    out: list[int] = []
    for i, part in enumerate(_SPECIAL_SPLIT_RE.split(text)):
        if i % 2:
            try:
                out.append(tokenizer.special_id(part))
                continue
            except KeyError:
                pass
        out += tokenizer.encode(part) if part else []
    return out


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the shared start of two id lists or strings.

    Gallops over C-speed slice compares, then bisects: the cost follows the shared length, so
    contexts of other rollouts (which differ early) cost little."""
    limit = min(len(a), len(b))
    lo, step = 0, 64
    while True:  # invariant: a[:lo] == b[:lo]
        hi = min(limit, lo + step)
        if a[lo:hi] != b[lo:hi]:
            break
        if hi == limit:
            return limit
        lo, step = hi, step * 2
    while lo < hi - 1:  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _NoReply(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ScriptedServer:
    """An OpenAI-compatible server answering from a script or a policy; see the module docstring.

    `block_size` rounds cached token counts down like vLLM's KV blocks (1: exact). `latency` is
    added to every generation request. `fallback` answers once the script is used up (default: HTTP
    500 saying so, so a test notices). `tokenizer`: None for `ScriptTokenizer`, or a `CWMTokenizer`
    (`cwm_agent.model.tokenizer.load_tokenizer()`) to count and return real CWM token ids.
    """

    def __init__(
        self,
        replies: list[Entry] | None = None,
        policy: Callable[[ScriptedRequest], Entry] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "cwm-scripted",
        max_model_len: int = 131072,
        *,
        latency: float = 0.0,
        block_size: int = 16,
        fallback: str | None = None,
        tokenizer: Any = None,
        reject_prefix_violations: bool = False,
    ):
        self.script = [parse_entry(e) for e in replies or []]
        self.policy = policy
        self.host, self.port = host, port
        self.model = model
        self.max_model_len = max_model_len
        self.latency = latency
        self.block_size = max(1, block_size)
        self.report_usage = True
        """False: replies carry no `usage` (as some OpenAI-compatible servers do)."""
        self.fallback = fallback
        self.tokenizer = tokenizer if tokenizer is not None else ScriptTokenizer()
        self.ids_api: IdsApi = "return_token_ids"
        """How token ids come back: return_token_ids (vLLM >= 0.10.2), logprobs (older vLLM: only as
        "token_id:N" logprob tokens when asked with logprobs + return_tokens_as_token_ids), none (id
        prompts taken, no ids returned), no_id_prompts (an id prompt is answered HTTP 400)."""
        self.reject_prefix_violations = reject_prefix_violations
        self.prefix_violations: list[PrefixViolation] = []
        self._rollouts: dict[str, list[list[int]]] = {}  # rollout -> prompt + reply ids of its last request
        self._requests: list[RecordedRequest] = []
        self._contexts: list[list[int]] = []  # prompt + reply ids of each answered request
        self._faults: list[tuple[Fault, str]] = []
        self._next_reply = 0
        self._generation_index = 0
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ScriptedServer:
        handler = type("Handler", (_Handler,), {"scripted": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- script and records -----------------------------------------------------------------------

    def add_replies(self, replies: Iterable[Entry]) -> None:
        with self._lock:
            self.script.extend(parse_entry(e) for e in replies)

    def inject_faults(self, faults: Iterable[Fault | dict], endpoint: str = "generate") -> None:
        """Fail the next requests, one fault each, before any script entry is used.

        endpoint: "generate" (completions and chat), "tokenize", "models", "health" or "any".
        """
        with self._lock:
            for fault in faults:
                parsed = parse_entry(fault) if isinstance(fault, dict) else fault
                if not isinstance(parsed, Fault):
                    raise ValueError(f"not a fault: {fault!r}")
                self._faults.append((parsed, endpoint))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def generation_requests(self) -> list[RecordedRequest]:
        """Requests for a reply of a dialogue (capability probes left out: they are no turn of one)."""
        return [
            r
            for r in self.requests
            if r.endpoint in ("/v1/completions", "/v1/chat/completions") and not _is_capability_probe(r.body)
        ]

    def prefix_reuse(self) -> list[float | None]:
        """For each answered generation request, in order: the share of its predecessor's context
        (prompt + reply, in characters) that it starts with; 1.0 when it extends it byte for byte.

        The predecessor is the earlier answered request with the longest prompt that is a strict
        prefix of this prompt (ties: the one whose prompt + reply shares most with it); a request
        with none (a rollout's first turn) gets None.
        """
        answered = [(r.prompt or "", r.reply or "") for r in self.generation_requests() if r.reply is not None]
        out: list[float | None] = []
        for i, (prompt, _) in enumerate(answered):
            best: tuple[int, int, int] | None = None  # (predecessor prompt length, shared chars, its context length)
            for earlier_prompt, earlier_reply in answered[:i]:
                if len(earlier_prompt) >= len(prompt) or not prompt.startswith(earlier_prompt):
                    continue
                context = earlier_prompt + earlier_reply
                candidate = (len(earlier_prompt), _common_prefix(prompt, context), len(context))
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
            out.append(None if best is None else best[1] / best[2])
        return out

    # -- request handling (called from handler threads) --------------------------------------------

    def _take_fault(self, endpoint_kind: str) -> Fault | None:
        with self._lock:
            for i, (fault, where) in enumerate(self._faults):
                if where in (endpoint_kind, "any"):
                    del self._faults[i]
                    return fault
        return None

    def _next_entry(self, request: ScriptedRequest) -> Reply | Fault:
        if _is_capability_probe(request.body):
            # `ModelClient.supports_token_ids` asks for one token after <|begin_of_text|>: answered here,
            # so a harness that probes first does not use up a scripted reply.
            return Reply(".")
        if self.policy is not None:
            try:
                return parse_entry(self.policy(request))
            except Exception as exc:  # a test's policy bug should read as an answer, not a dead thread
                raise _NoReply(
                    500, f"scripted server: the policy failed on request #{request.index}: {exc!r}"
                ) from None
        with self._lock:
            if self._next_reply < len(self.script):
                entry = self.script[self._next_reply]
                self._next_reply += 1
                return entry
        if self.fallback is not None:
            return Reply(self.fallback)
        raise _NoReply(
            500,
            f"scripted server: no reply left for generation request #{request.index} "
            f"(the script had {len(self.script)})",
        )

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _cached(self, prompt_ids: list[int]) -> int:
        with self._lock:
            contexts = list(self._contexts)
        best = max((_common_prefix(prompt_ids, context) for context in contexts), default=0)
        # vLLM always computes the last prompt token and caches whole blocks only.
        best = min(best, len(prompt_ids) - 1)
        return max(0, best - best % self.block_size)

    def _encode_text(self, text: str) -> list[int]:
        return encode_text_prompt(self.tokenizer, text)

    def _stop_ids(self, stop: str | None) -> list[int]:
        """The ids a model emits to end its reply on `stop` (None: by itself, i.e. <|eot_id|>)."""
        stop = stop or "<|eot_id|>"
        if isinstance(self.tokenizer, ScriptTokenizer):
            return self.tokenizer.encode(stop)
        try:
            return [self.tokenizer.special_id(stop)]
        except KeyError:
            return self.tokenizer.encode(stop)

    def _check_prefix(self, rollout: str, prompt_ids: list[int], record: RecordedRequest) -> None:
        with self._lock:
            contexts = self._rollouts.get(rollout)
            position = next((i for i, r in enumerate(self._requests) if r is record), len(self._requests))
        if not contexts:
            return
        shared = [(_common_prefix(prompt_ids, c), c) for c in contexts]
        at, context = max(shared, key=lambda pair: pair[0])
        if at == len(context):
            return
        violation = PrefixViolation(rollout, position, at, context[at : at + 8], prompt_ids[at : at + 8])
        with self._lock:
            self.prefix_violations.append(violation)
        if self.reject_prefix_violations:
            raise _NoReply(400, f"scripted server: {violation.describe()}")

    def _generate(self, endpoint: str, body: dict[str, Any], record: RecordedRequest) -> dict[str, Any]:
        chat = endpoint == "/v1/chat/completions"
        requested = body.get("model")
        if requested is not None and requested != self.model:
            raise _NoReply(404, f"The model `{requested}` does not exist.")
        messages = None
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _NoReply(400, "`messages` must be a non-empty list")
            # Stands in for the server's chat template; only prefix statistics depend on it.
            prompt = "".join(
                f"<|start_header_id|>{m.get('role')}<|end_header_id|>\n\n{m.get('content')}<|eot_id|>"
                for m in messages
                if isinstance(m, dict)
            )
        given_ids: list[int] | None = None
        if not chat:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt):
                if self.ids_api == "no_id_prompts":
                    raise _NoReply(400, "`prompt` must be a string")
                given_ids = list(prompt)
                prompt = self.tokenizer.decode(given_ids)
            if not isinstance(prompt, str):
                raise _NoReply(400, "`prompt` must be a string or a list of token ids")
        record.prompt = prompt
        if given_ids is not None:
            prompt_ids = given_ids  # used as given: vLLM adds no BOS to an id prompt
        else:
            prompt_ids = self._encode_text(prompt)
            if not chat and body.get("add_special_tokens", True):
                # Like vLLM: a completions text prompt gets BOS unless the client says not to.
                prompt_ids = [SPECIAL_IDS["<|begin_of_text|>"], *prompt_ids]
        record.prompt_tokens = len(prompt_ids)
        record.prompt_ids = prompt_ids
        rollout = str(body.get("user") or "")
        if given_ids is not None:
            self._check_prefix(rollout, prompt_ids, record)
        if self.ids_api == "return_token_ids":
            want_ids = not chat and bool(body.get("return_token_ids"))
        else:
            as_ids = body.get("logprobs") is not None and bool(body.get("return_tokens_as_token_ids"))
            want_ids = not chat and self.ids_api == "logprobs" and as_ids
        # Id requests count and cache the stop id like vLLM; text requests keep the text-only counts.
        by_ids = want_ids or given_ids is not None
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _NoReply(400, "max_tokens must be a positive integer")
        limit = self.max_model_len
        if len(prompt_ids) >= limit:
            raise _NoReply(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{len(prompt_ids)} input tokens. Please reduce the length of the input messages.",
            )
        if max_tokens is not None and max_tokens > limit - len(prompt_ids):
            raise _NoReply(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum context "
                f"length is {limit} tokens and your request has {len(prompt_ids)} input tokens "
                f"({max_tokens} > {limit} - {len(prompt_ids)}).",
            )
        if max_tokens is None:
            max_tokens = VLLM_DEFAULT_MAX_TOKENS  # what vLLM does when a client forgets it
        n = body.get("n", 1)
        if not isinstance(n, int) or n < 1:
            raise _NoReply(400, "n must be a positive integer")
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        keep_stop = bool(body.get("include_stop_str_in_output", False))

        choices, reply_ids_all, full_ids_all, texts = [], [], [], []
        for choice_index in range(n):
            with self._lock:
                index = self._generation_index
                self._generation_index += 1
            entry = self._next_entry(ScriptedRequest(index, endpoint, body, prompt, messages))
            if entry.latency:
                time.sleep(entry.latency)
            if isinstance(entry, Fault):
                if entry.kind != "latency":
                    raise _FaultRaised(entry)
                entry = self._next_entry(ScriptedRequest(index, endpoint, body, prompt, messages))
                if isinstance(entry, Fault):
                    raise _FaultRaised(entry)
            text, finish, stop_reason = entry.text, entry.finish_reason, None
            cut = min(((text.find(s), s) for s in stops if s and s in text), default=None)
            if cut is not None:
                text = text[: cut[0]]
                finish, stop_reason = "stop", cut[1]
            reply_ids = self.tokenizer.encode(text)
            if len(reply_ids) > max_tokens:
                reply_ids = reply_ids[:max_tokens]
                text, finish, stop_reason = self.tokenizer.decode(reply_ids), "length", None
            full_ids = reply_ids + (self._stop_ids(stop_reason) if finish == "stop" else [])
            if keep_stop and stop_reason is not None:
                text += stop_reason
                reply_ids = self.tokenizer.encode(text)
            reply_ids_all.append(reply_ids)
            full_ids_all.append(full_ids)
            texts.append(text)
            choice: dict[str, Any] = {
                "index": choice_index, "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason
            }  # fmt: skip
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
            else:
                choice.update(text=text, prompt_logprobs=None)
            if want_ids and self.ids_api == "return_token_ids":
                choice.update(prompt_token_ids=prompt_ids, token_ids=full_ids)
            elif want_ids:
                choice["logprobs"] = {
                    "text_offset": [0] * len(full_ids),
                    "token_logprobs": [0.0] * len(full_ids),
                    "tokens": [f"token_id:{t}" for t in full_ids],
                    "top_logprobs": [{} for _ in full_ids],
                }
            choices.append(choice)

        counted = full_ids_all if by_ids else reply_ids_all
        cached = self._cached(prompt_ids)
        with self._lock:
            for ids in counted:
                self._contexts.append(prompt_ids + ids)
            if given_ids is not None:
                self._rollouts[rollout] = [prompt_ids + ids for ids in full_ids_all]
        completion_tokens = sum(len(r) for r in counted)
        record.reply = texts[0]
        record.reply_ids = full_ids_all[0]
        record.finish_reason = choices[0]["finish_reason"]
        record.cached_tokens = cached
        usage = {
            "prompt_tokens": len(prompt_ids),
            "total_tokens": len(prompt_ids) + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            # Some OpenAI-compatible servers send no usage; report_usage=False plays one.
            **({"usage": usage} if self.report_usage else {}),
        }


class _FaultRaised(Exception):
    def __init__(self, fault: Fault):
        super().__init__(fault.kind)
        self.fault = fault


def _error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}
    return {
        "error": {"message": message, "type": kinds.get(status, "InternalServerError"), "param": None, "code": status}
    }


class _Handler(BaseHTTPRequestHandler):
    scripted: ScriptedServer  # set on the subclass made by ScriptedServer.start
    server_version = "cwm-scripted"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the records instead
        pass

    def _send_json(self, status: int, payload: Any, *, cut: bool = False, malformed: bool = False) -> None:
        data = json.dumps(payload).encode()
        sent = data[: max(1, len(data) // 2)] if (cut or malformed) else data
        if not (cut or malformed):
            self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        # truncate announces the whole length and closes early; malformed announces what it sends.
        self.send_header("Content-Length", str(len(data) if cut else len(sent)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()

    def _read_body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _endpoint_kind(self, path: str) -> str:
        if path in ("/v1/completions", "/v1/chat/completions"):
            return "generate"
        if path in ("/tokenize", "/detokenize"):
            return "tokenize"
        return {"/v1/models": "models", "/health": "health"}.get(path, "other")

    def _apply_fault(self, fault: Fault, payload_for_cut: Any = None) -> bool:
        """Carry out a fault; True when the request is finished (nothing else to send)."""
        if fault.latency:
            time.sleep(fault.latency)
        if fault.kind == "latency":
            return False
        if fault.kind == "status":
            self._send_json(fault.status, _error_body(fault.status, fault.message))
        elif fault.kind == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            payload = payload_for_cut or {"choices": [{"index": 0, "text": "x" * 64, "finish_reason": "stop"}]}
            self._send_json(200, payload, cut=fault.kind == "truncate", malformed=fault.kind == "malformed")
        return True

    def _handle(self, method: str) -> None:
        scripted = self.scripted
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        body = self._read_body() if method == "POST" else {}
        kind = self._endpoint_kind(path)
        generate = kind == "generate"
        self.record = record = RecordedRequest(endpoint=path, body=body or {}, time=time.time(), method=method)
        scripted._record(record)
        if generate:
            with scripted._lock:
                scripted.in_flight += 1
                scripted.max_in_flight = max(scripted.max_in_flight, scripted.in_flight)
        try:
            fault = scripted._take_fault(kind)
            if fault is not None:
                self._note_fault(fault)
                if self._apply_fault(fault):
                    return
            if body is None:
                self._send_json(400, _error_body(400, "the request body is not a JSON object"))
            elif generate:
                if scripted.latency:
                    time.sleep(scripted.latency)
                try:
                    payload = scripted._generate(path, body, record)
                except _NoReply as exc:
                    self._send_json(exc.status, _error_body(exc.status, exc.message))
                    return
                except _FaultRaised as exc:
                    self._note_fault(exc.fault)
                    self._apply_fault(Fault(exc.fault.kind, exc.fault.status, 0.0, exc.fault.message))
                    return
                self._send_json(200, payload)
            else:
                self._answer_other(method, path, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to answer
        finally:
            if generate:
                with scripted._lock:
                    scripted.in_flight -= 1

    def _note_fault(self, fault: Fault) -> None:
        if fault.kind != "latency":
            self.record.fault = f"http_{fault.status}" if fault.kind == "status" else fault.kind
            self.record.status = fault.status if fault.kind == "status" else 0

    def _answer_other(self, method: str, path: str, body: dict[str, Any]) -> None:
        scripted = self.scripted
        if method == "GET" and path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
        elif method == "GET" and path == "/v1/models":
            card = {
                "id": scripted.model,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "cwm-agent",
                "root": scripted.model,
                "parent": None,
                "max_model_len": scripted.max_model_len,
                "permission": [],
            }
            self._send_json(200, {"object": "list", "data": [card]})
        elif method == "POST" and path == "/tokenize":
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                self._send_json(400, _error_body(400, "`prompt` must be a string"))
                return
            tokens = scripted.tokenizer.encode(prompt)
            if body.get("add_special_tokens", True):
                tokens = [SPECIAL_IDS["<|begin_of_text|>"], *tokens]
            reply = {
                "count": len(tokens),
                "max_model_len": scripted.max_model_len,
                "tokens": tokens,
                "token_strs": None,
            }
            self._send_json(200, reply)
        elif method == "POST" and path == "/detokenize":
            tokens = body.get("tokens")
            if not isinstance(tokens, list):
                self._send_json(400, _error_body(400, "`tokens` must be a list of ids"))
                return
            self._send_json(200, {"prompt": scripted.tokenizer.decode(tokens)})
        else:
            self._send_json(404, _error_body(404, f"no route {method} {path}"))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


def _is_capability_probe(body: dict[str, Any]) -> bool:
    return body.get("prompt") == [SPECIAL_IDS["<|begin_of_text|>"]] and body.get("max_tokens") == 1


def load_script(path: Path) -> list[Reply | Fault]:
    """Read a JSON or YAML list of script entries."""
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of replies")
    return [parse_entry(e) for e in data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cwm_agent.model.scripted_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--replies", type=Path, help="JSON or YAML list of replies (strings or mappings)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="cwm-scripted")
    parser.add_argument("--max-model-len", type=int, default=131072)
    parser.add_argument("--fallback", help="reply with this text once the script is used up (default: HTTP 500)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every generation request")
    parser.add_argument(
        "--tokenizer", help="Llama 3's tiktoken file, or `cwm` to find it: CWM's real token ids (default: a simple one)"
    )
    args = parser.parse_args(argv)
    try:
        script = load_script(args.replies) if args.replies else []
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the replies: {exc}", file=sys.stderr)
        return 2
    tokenizer = None
    if args.tokenizer:
        from cwm_agent.model.tokenizer import TokenizerNotFoundError, load_tokenizer

        try:
            tokenizer = load_tokenizer(None if args.tokenizer == "cwm" else args.tokenizer)
        except TokenizerNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    server = ScriptedServer(
        script,
        host=args.host,
        port=args.port,
        model=args.model,
        max_model_len=args.max_model_len,
        latency=args.latency,
        fallback=args.fallback,
        tokenizer=tokenizer,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"scripted model server at {server.url} ({len(script)} replies)", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
