"""Async client for OpenAI-compatible model servers (vLLM serving CWM).

Share ONE `ModelClient` between all rollouts of a process: its `max_concurrency` limit is a
semaphore owned by the client, so it bounds the generation requests in flight to the server across
every rollout that uses it. Two clients mean two independent limits.

The client never re-templates: `complete` sends the prompt text as given, so a caller that builds
each prompt as the previous prompt + reply + new messages gets vLLM's prefix cache on every turn.
`complete_ids` sends the prompt as token ids and returns the reply's ids as generated, so a caller
can keep the context as ids the way CWM's RL environment does (nothing re-tokenized across turns).

A client belongs to the event loop that first uses it; used from a new loop (a second
`asyncio.run`), it opens a fresh connection pool and semaphore there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from cwm_agent.errors import UserError

EOT = "<|eot_id|>"
# <|end_of_text|>, <|eom_id|>, <|eot_id|>: the end ids of CWM's model config (its `eos_token_id` list).
CWM_STOP_TOKEN_IDS = [128001, 128008, 128009]

START_HINT = (
    "start one with `cwm-agent serve MODEL` (needs vLLM and a GPU), "
    "or pass --model-url with the address of a running OpenAI-compatible server"
)

T = TypeVar("T")


class ModelError(UserError, RuntimeError):
    """The server refused a request, or answered something we cannot use."""


class ModelUnavailableError(ModelError):
    """The server could not be reached or kept failing until the retry budget ran out."""


class ModelDownError(ModelUnavailableError):
    """Every request to the server has failed for `ModelConfig.breaker_seconds`: the circuit breaker
    is open and later requests fail at once. A batch treats it as fatal (no instance could succeed)."""


class ContextLengthError(ModelError):
    """The prompt (plus the reply budget) does not fit the server's context window."""

    def __init__(self, message: str, prompt_tokens: int | None = None, max_model_len: int | None = None):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len

    @property
    def available(self) -> int | None:
        """Tokens left for the reply, when the server said how long the prompt is."""
        if self.prompt_tokens is None or self.max_model_len is None:
            return None
        return self.max_model_len - self.prompt_tokens


class ModelConfig(BaseModel):
    """Where the model server is and how to talk to it."""

    model_config = ConfigDict(extra="forbid")

    url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the OpenAI-compatible API (ends in /v1; added when the URL has no path)."""
    model: str | None = None
    """Model id to request; None asks the server (the first id of /v1/models)."""
    api: Literal["completions", "chat"] = "completions"
    """completions: send our rendered CWM text (prefix caching hits); chat: let the server template."""
    api_key: str | None = None
    """Sent as a Bearer token (vLLM --api-key)."""
    request_timeout: float = Field(3600.0, gt=0)
    """Seconds one attempt may wait for the server's next bytes; a 65536-token reply under load takes many
    minutes."""
    request_deadline: float | None = Field(None, gt=0)
    """Seconds one request may take in all, attempts and retries included, however the server behaves (one
    that accepts and never answers, or trickles bytes). None: request_timeout."""
    breaker_seconds: float | None = Field(300.0, gt=0)
    """Circuit breaker: once every request has failed for this long (no success in between), the server
    counts as down: ModelDownError, now and for every later request of this client. None: never."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    max_retries: int = Field(8, ge=0)
    """Retries after the first attempt on connection errors, timeouts, 429, 5xx and broken replies."""
    retry_total_seconds: float = 600.0
    """No retry starts once this many seconds have passed since the request first failed (a long
    generation that breaks after 20 minutes is still retried; a server that stays down is not)."""
    retry_initial_delay: float = 0.5
    """First backoff delay; doubles per retry, with jitter, up to retry_max_delay."""
    retry_max_delay: float = 30.0
    max_concurrency: int = Field(64, ge=1)
    """Generation requests in flight at once, across all rollouts sharing this client."""
    tokenizer: str | None = None
    """Local tokenizer for `tokenize`/`count_tokens`: a tiktoken BPE file (Llama 3's tokenizer.model, read as
    CWM's tokenizer; needs `tiktoken`), `cwm` to find that file (see `model.tokenizer.load_tokenizer`), or a
    Hugging Face tokenizer path or id (needs `transformers`). None: the server's /tokenize."""


class SamplingParams(BaseModel):
    """Sampling settings; the defaults are CWM's SWE-bench settings."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = Field(65536, ge=1)
    """Always sent: vLLM would otherwise stop replies after 16 tokens."""
    seed: int | None = None
    stop: list[str] = Field(default_factory=lambda: [EOT])
    stop_token_ids: list[int] = Field(default_factory=lambda: list(CWM_STOP_TOKEN_IDS))
    n: int = Field(1, ge=1)
    skip_special_tokens: bool = False
    include_stop_str_in_output: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)
    """Further request fields passed as they are (top_k, repetition_penalty, ...)."""

    def request_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": self.n,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "skip_special_tokens": self.skip_special_tokens,
            "include_stop_str_in_output": self.include_stop_str_in_output,
        }
        if self.seed is not None:
            fields["seed"] = self.seed
        fields.update(self.extra)
        return fields


class Completion(BaseModel):
    """One generated reply and what it cost."""

    text: str
    finish_reason: str | None
    """"stop" (a stop string or id was hit) or "length" (max_tokens reached)."""
    stop_reason: str | int | None = None
    """The stop string or token id that ended the reply, when the server says (vLLM does)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    """Prompt tokens served from the prefix cache; None when the server does not report it
    (vLLM reports it with --enable-prompt-tokens-details, which `cwm-agent serve` turns on)."""
    latency: float
    """Seconds of the request that succeeded (queueing and failed attempts not included)."""
    attempts: int = 1
    usage: dict[str, Any] = Field(default_factory=dict)
    """The server's usage object as it came."""
    token_ids: list[int] | None = None
    """The reply's token ids exactly as sampled, when the server returns them (vLLM >= 0.10.2 with
    `return_token_ids`, which `complete_ids` asks for; None otherwise). vLLM returns every sampled id: a
    reply ended by a stop id (<|eot_id|> and the other `stop_token_ids`, or EOS) ENDS WITH that id although
    `text` leaves it out; a reply cut by max_tokens ("length") has no stop id; a reply ended by a stop
    *string* has the ids through the token that completed the string (`text` is cut there, the ids are not)."""


# How a server returns the reply's ids: vLLM >= 0.10.2 puts `token_ids` on each choice when asked with
# `return_token_ids`; older vLLM gives them only as logprob tokens spelled "token_id:N".
_IDS_FIELDS = {"return_token_ids": True}
_IDS_BY_LOGPROBS = {"return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True}
BOS_ID = 128000


def _choice_token_ids(choice: dict[str, Any]) -> list[int] | None:
    """The reply ids of a completions choice, from `token_ids` or from "token_id:N" logprob tokens."""
    ids = choice.get("token_ids")
    if ids is None:
        logprobs = choice.get("logprobs")
        tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            return None
        try:
            ids = [int(t[len("token_id:") :]) for t in tokens]
        except ValueError:
            raise _BadReply("a logprob token that is not token_id:N") from None
    if not isinstance(ids, list) or not all(_int_or_none(t) is not None for t in ids):
        raise _BadReply("a choice whose token_ids are not a list of ids")
    return ids


class _BadReply(ValueError):
    """A 2xx reply we cannot read (truncated or malformed); worth retrying."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


_CTX_RE = re.compile(r"maximum context length is (\d+) tokens")
_INPUT_RE = re.compile(r"has (\d+) input tokens|\((\d+) in the messages")


def _server_message(resp: httpx.Response) -> str:
    """The error text of a reply in vLLM's shapes ({"error": {"message"}}, {"message"}, {"detail"})."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    return str(data)[:500]


def _context_error(message: str) -> ContextLengthError | None:
    ctx = _CTX_RE.search(message)
    if not ctx:
        return None
    found = _INPUT_RE.search(message)
    prompt_tokens = int(found.group(1) or found.group(2)) if found else None
    return ContextLengthError(message, prompt_tokens=prompt_tokens, max_model_len=int(ctx.group(1)))


def _normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    if httpx.URL(url).path in ("", "/"):
        url += "/v1"
    return url


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ModelClient:
    """Async client for one model server; see the module docstring for sharing rules."""

    def __init__(self, config: ModelConfig | None = None):
        self.config = config or ModelConfig()
        self.url = _normalize_url(self.config.url)
        # /tokenize and /health live at the server root, not under /v1.
        self.root_url = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.model: str | None = self.config.model
        self.max_model_len: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None
        self._model_lock: asyncio.Lock | None = None
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: Any = None
        self._ids_fields: dict[str, Any] | None = None  # set by supports_token_ids
        self._failing_since: float | None = None
        """When requests started failing with no success since (the circuit breaker's clock)."""
        self._down: str | None = None
        """Why the breaker opened; set once, then every request fails at once."""

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = self._loop = self._limit = self._model_lock = None

    # -- public API -------------------------------------------------------------------------------

    async def complete(
        self, prompt: str, sampling: SamplingParams | None = None, *, prompt_tokens: int | None = None
    ) -> Completion:
        """Generate one reply to `prompt` (sent as it is) with POST /v1/completions.

        `prompt_tokens`, when the caller knows it, lets the client shrink max_tokens to what is left
        of the context window before sending (vLLM rejects prompt + max_tokens > max_model_len).
        """
        results = await self.complete_n(prompt, _single(sampling), prompt_tokens=prompt_tokens)
        return results[0]

    async def complete_n(
        self, prompt: str, sampling: SamplingParams | None = None, *, prompt_tokens: int | None = None
    ) -> list[Completion]:
        """Like `complete`, returning all `sampling.n` choices (usage is the whole request's)."""
        return await self._generate("completions", {"prompt": prompt}, sampling or SamplingParams(), prompt_tokens)

    async def complete_ids(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        prompt_tokens: int | None = None,
        rollout: str | None = None,
    ) -> Completion:
        """Generate one reply to a prompt given as token ids (sent as they are: no BOS added, nothing
        re-tokenized) and return it with `Completion.token_ids`, the reply's ids as sampled (see there
        for where the stop id is). The next prompt of the dialogue is then prompt_ids + token_ids + the
        new messages' ids (`CWMTokenizer.encode_pieces`).

        `prompt_tokens` defaults to len(prompt_ids). `rollout` names the dialogue in the request's
        OpenAI `user` field (vLLM ignores it; the scripted server checks each rollout's prompts extend
        its previous prompt + reply). Needs a server that takes id prompts: see `supports_token_ids`.
        """
        # Not copied or checked id by id: a rollout's prompt grows to 100k ids and is sent every turn.
        ids = prompt_ids if isinstance(prompt_ids, list) else list(prompt_ids)
        if not ids:
            raise ValueError("prompt_ids must be a non-empty list of token ids")
        payload: dict[str, Any] = {"prompt": ids, **(self._ids_fields or _IDS_FIELDS)}
        if rollout is not None:
            payload["user"] = rollout
        sampling = _single(sampling)
        count = len(ids) if prompt_tokens is None else prompt_tokens
        return (await self._generate("completions", payload, sampling, count))[0]

    async def supports_token_ids(self) -> bool:
        """Whether the server takes a prompt as token ids AND returns the reply's ids (one request: a
        one-token reply to <|begin_of_text|>). Remembers how the ids came (vLLM >= 0.10.2's `token_ids`,
        or older vLLM's "token_id:N" logprobs) so `complete_ids` asks for them that way. A server that
        refuses the request answers False; one that cannot be reached raises ModelUnavailableError.
        """
        body = {
            "model": await self._model_id(),
            "prompt": [BOS_ID],
            "max_tokens": 1,
            "temperature": 0.0,
            "add_special_tokens": False,
            **_IDS_BY_LOGPROBS,
        }

        def parse(data: dict[str, Any]) -> str | None:
            choices = data.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise _BadReply("a reply without choices")
            if isinstance(choices[0].get("token_ids"), list):
                return "token_ids"
            return "logprobs" if _choice_token_ids(choices[0]) is not None else None

        try:
            how, _, _ = await self._call("POST", f"{self.url}/completions", body, parse, "token-id probe", limited=True)
        except ModelUnavailableError:
            raise
        except ModelError:
            return False
        if how is None:
            return False
        self._ids_fields = _IDS_FIELDS if how == "token_ids" else _IDS_BY_LOGPROBS
        return True

    async def chat(
        self,
        messages: list[dict[str, Any]],
        sampling: SamplingParams | None = None,
        *,
        prompt_tokens: int | None = None,
    ) -> Completion:
        """Generate one reply with POST /v1/chat/completions (the server applies its chat template)."""
        results = await self._generate("chat/completions", {"messages": messages}, _single(sampling), prompt_tokens)
        return results[0]

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added (local tokenizer if configured, else /tokenize)."""
        if self.config.tokenizer:
            tokenizer = await self._local_tokenizer()
            from cwm_agent.model.tokenizer import CWMTokenizer

            if isinstance(tokenizer, CWMTokenizer):
                return await asyncio.to_thread(tokenizer.encode, text)
            return await asyncio.to_thread(lambda: list(tokenizer.encode(text, add_special_tokens=False)))
        body = {"model": await self._model_id(), "prompt": text, "add_special_tokens": False}

        def parse(data: dict[str, Any]) -> list[int]:
            tokens = data.get("tokens")
            if not isinstance(tokens, list):
                raise _BadReply("a /tokenize reply without `tokens`")
            if isinstance(data.get("max_model_len"), int):
                self.max_model_len = data["max_model_len"]
            return tokens

        tokens, _, _ = await self._call("POST", f"{self.root_url}/tokenize", body, parse, "tokenize", limited=False)
        return tokens

    async def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` as the model sees it (no BOS added)."""
        return len(await self.tokenize(text))

    # -- the agent's Model protocol (cwm_agent.model.base) ----------------------------------------

    async def generate(self, prompt: Any, sampling: SamplingParams) -> Completion:
        """One reply to a `cwm_agent.model.base.Prompt`: chat messages with `api: chat`, token ids when the
        prompt carries them, else the rendered text."""
        if self.config.api == "chat":
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            completion = await self.chat(messages, sampling, prompt_tokens=None)
            # The reply continues "<think>\n" as a completion does: an opening the server's template left
            # to the model is not part of it.
            completion.text = completion.text.removeprefix("<think>\n")
            return completion
        if prompt.ids is not None:
            return await self.complete_ids(prompt.ids, sampling, rollout=prompt.rollout)
        return await self.complete(prompt.text, sampling)

    async def encode(self, text: str) -> list[int]:
        return await self.tokenize(text)

    async def decode(self, ids: list[int]) -> str:
        """Text of token ids (local tokenizer if configured, else the server's /detokenize)."""
        if self.config.tokenizer:
            tokenizer = await self._local_tokenizer()
            return tokenizer.decode(list(ids))
        body = {"model": await self._model_id(), "tokens": list(ids)}

        def parse(data: dict[str, Any]) -> str:
            text = data.get("prompt")
            if not isinstance(text, str):
                raise _BadReply("a /detokenize reply without `prompt`")
            return text

        text, _, _ = await self._call("POST", f"{self.root_url}/detokenize", body, parse, "detokenize", limited=False)
        return text

    @property
    def exact_tokenizer(self) -> bool:
        name = self.config.tokenizer
        return name is not None and (name == "cwm" or Path(name).expanduser().is_file())

    async def check(self, wait: float = 0.0) -> str:
        """Ask the server which model it serves; return the id this client will request.

        Tries for up to `wait` seconds (at least once). Raises ModelUnavailableError with a hint
        on how to start a server when none answers, ModelError when the configured model is not served.
        """
        deadline = time.monotonic() + wait
        timeout = httpx.Timeout(min(self.config.request_timeout, 30.0), connect=min(self.config.connect_timeout, 5.0))
        while True:
            try:
                data, _, _ = await self._call(
                    "GET", f"{self.url}/models", None, self._parse_models, "model check",
                    limited=False, retries=False, timeout=timeout,
                )  # fmt: skip
                break
            except ModelUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        ids = [entry[0] for entry in data]
        if self.model is None:
            self.model = ids[0]
        elif self.model not in ids:
            served = ", ".join(ids)
            raise ModelError(
                f"the server at {self.url} serves {served}, not {self.model}; pass one of those as the model"
            )
        self.max_model_len = dict(data).get(self.model) or self.max_model_len
        return self.model

    # -- internals --------------------------------------------------------------------------------

    def _bind(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._http is None or self._limit is None:
            headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
            self._http = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.config.request_timeout, connect=self.config.connect_timeout),
                # The semaphore is the limit; the pool only must not make token counts wait on generations.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.config.max_concurrency),
                trust_env=False,
            )
            self._limit = asyncio.Semaphore(self.config.max_concurrency)
            self._model_lock = asyncio.Lock()
            self._loop = loop
        return self._http, self._limit

    def _parse_models(self, data: dict[str, Any]) -> list[tuple[str, int | None]]:
        entries = data.get("data")
        if not isinstance(entries, list) or not entries:
            raise _BadReply("a /v1/models reply without models")
        out = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise _BadReply("a /v1/models entry without an id")
            out.append((entry["id"], _int_or_none(entry.get("max_model_len"))))
        return out

    async def _model_id(self) -> str:
        if self.model is not None:
            return self.model
        self._bind()
        assert self._model_lock is not None
        async with self._model_lock:
            if self.model is None:
                url = f"{self.url}/models"
                data, _, _ = await self._call("GET", url, None, self._parse_models, "model list", limited=False)
                self.model, self.max_model_len = data[0]
        return self.model

    async def _generate(
        self, endpoint: str, payload: dict[str, Any], sampling: SamplingParams, prompt_tokens: int | None
    ) -> list[Completion]:
        if prompt_tokens is not None and self.max_model_len is not None:
            available = self.max_model_len - prompt_tokens
            if available < 1:
                raise ContextLengthError(
                    f"the prompt has {prompt_tokens} tokens and the context window is {self.max_model_len}",
                    prompt_tokens,
                    self.max_model_len,
                )
            if sampling.max_tokens > available:
                sampling = sampling.model_copy(update={"max_tokens": available})
        chat = endpoint.startswith("chat")
        body = {"model": await self._model_id(), **payload, **sampling.request_fields()}
        if not chat:
            # The rendered prompt already starts with <|begin_of_text|>; vLLM would add a second one.
            body.setdefault("add_special_tokens", False)

        def parse(data: dict[str, Any]) -> list[tuple[str, str | None, Any, list[int] | None]]:
            choices = data.get("choices")
            if not isinstance(choices, list) or not choices:
                raise _BadReply("a reply without choices")
            out = []
            for choice in choices:
                if not isinstance(choice, dict):
                    raise _BadReply("a malformed choice")
                if chat:
                    message = choice.get("message")
                    text = message.get("content") if isinstance(message, dict) else None
                else:
                    text = choice.get("text")
                if text is not None and not isinstance(text, str):
                    raise _BadReply("a choice whose text is not a string")
                ids = None if chat else _choice_token_ids(choice)
                out.append((text or "", choice.get("finish_reason"), choice.get("stop_reason"), ids))
            return out

        try:
            (choices, usage), latency, attempts = await self._call_with_usage(endpoint, body, parse)
        except ContextLengthError as exc:
            # vLLM refuses max_tokens beyond what the window leaves; ask once more for exactly that much.
            available = exc.available
            if available is None or available < 1 or available >= body["max_tokens"]:
                raise
            if exc.max_model_len:
                self.max_model_len = exc.max_model_len
            body["max_tokens"] = available
            (choices, usage), latency, attempts = await self._call_with_usage(endpoint, body, parse)
        details = usage.get("prompt_tokens_details")
        cached = _int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
        return [
            Completion(
                text=text,
                finish_reason=finish,
                stop_reason=stop if isinstance(stop, (str, int)) else None,
                prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
                completion_tokens=_int_or_none(usage.get("completion_tokens")),
                cached_tokens=cached,
                latency=latency,
                attempts=attempts,
                usage=usage,
                token_ids=ids,
            )
            for text, finish, stop, ids in choices
        ]

    async def _call_with_usage(self, endpoint: str, body: dict[str, Any], parse: Callable[[dict[str, Any]], T]):
        def parse_all(data: dict[str, Any]) -> tuple[T, dict[str, Any]]:
            usage = data.get("usage")
            return parse(data), usage if isinstance(usage, dict) else {}

        return await self._call("POST", f"{self.url}/{endpoint}", body, parse_all, endpoint, limited=True)

    async def _call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        parse: Callable[[dict[str, Any]], T],
        what: str,
        *,
        limited: bool,
        retries: bool = True,
        timeout: httpx.Timeout | None = None,
    ) -> tuple[T, float, int]:
        """Send with retries; return (parsed reply, seconds of the good attempt, attempts)."""
        http, limit = self._bind()
        cfg = self.config
        if self._down is not None:
            raise ModelDownError(self._down)
        failing_since: float | None = None
        deadline = time.monotonic() + (cfg.request_deadline or cfg.request_timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with limit if limited else contextlib.nullcontext():
                    sent = time.monotonic()
                    request = http.request(method, url, json=body, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
                    resp = await asyncio.wait_for(request, max(0.0, deadline - sent))
                latency = time.monotonic() - sent
                result = parse(self._reply_json(resp, what)), latency, attempt
                self._failing_since = None
                return result
            except asyncio.TimeoutError:
                spent = cfg.request_deadline or cfg.request_timeout
                self._note_failure(what, "no reply before the request's deadline")
                raise ModelUnavailableError(
                    f"the model server at {self.url} did not answer {what} within {spent:g}s "
                    f"(model.request_deadline), {attempt} attempt{'s' if attempt > 1 else ''}"
                ) from None
            except _Retry as exc:
                reason, retry_after = exc.reason, exc.retry_after
            except _BadReply as exc:
                reason, retry_after = f"an unreadable reply ({exc})", None
            except httpx.TimeoutException as exc:
                reason, retry_after = f"no reply in time ({type(exc).__name__})", None
            except httpx.TransportError as exc:
                reason, retry_after = f"{type(exc).__name__}: {exc or 'connection failed'}", None
            # The budget runs from the first failure: neither waiting for a slot behind other
            # rollouts nor a long good generation before a failure is retrying.
            failing_since = failing_since if failing_since is not None else time.monotonic()
            self._note_failure(what, reason)
            elapsed = time.monotonic() - failing_since
            delay = min(cfg.retry_max_delay, cfg.retry_initial_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, cfg.retry_max_delay))
            if (
                not retries
                or attempt > cfg.max_retries
                or elapsed + delay > cfg.retry_total_seconds
                or (time.monotonic() + delay > deadline)
            ):
                tries = f"after {attempt} attempt{'s' if attempt > 1 else ''} in {elapsed:.1f}s"
                raise ModelUnavailableError(
                    f"the model server at {self.url} is not reachable or keeps failing ({what}: {reason}, {tries}); "
                    + START_HINT
                )
            await asyncio.sleep(delay)

    def _note_failure(self, what: str, reason: str) -> None:
        """Start or advance the circuit breaker's clock; open it (ModelDownError) once every request has
        failed for `breaker_seconds`."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        limit = self.config.breaker_seconds
        if limit is not None and now - self._failing_since >= limit and self._down is None:
            self._down = (
                f"the model server at {self.url} is down: every request has failed for "
                f"{now - self._failing_since:.0f}s (model.breaker_seconds: {limit:g}; last: {what}: {reason}); "
                + START_HINT
            )
        if self._down is not None:
            raise ModelDownError(self._down)

    def _reply_json(self, resp: httpx.Response, what: str) -> dict[str, Any]:
        status = resp.status_code
        if status == 429 or status == 408 or status >= 500:
            raise _Retry(f"HTTP {status}: {_server_message(resp)}", _retry_after(resp))
        if status >= 400:
            message = _server_message(resp)
            context = _context_error(message)
            if context is not None:
                raise context
            hint = ""
            if what == "tokenize" and status == 404:
                hint = "; this server has no /tokenize: configure a local tokenizer (ModelConfig.tokenizer)"
            raise ModelError(f"{what} refused by {self.url} (HTTP {status}): {message}{hint}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise _BadReply(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _BadReply("not a JSON object")
        return data

    async def _local_tokenizer(self) -> Any:
        name = self.config.tokenizer
        if self._tokenizer is None and name is not None and (name == "cwm" or Path(name).expanduser().is_file()):
            # A file is a tiktoken BPE file (a Hugging Face tokenizer is a folder or a hub id).
            from cwm_agent.model.tokenizer import load_tokenizer

            self._tokenizer = await asyncio.to_thread(load_tokenizer, None if name == "cwm" else name)
        if self._tokenizer is None:
            try:
                from transformers import AutoTokenizer
            except ImportError:
                raise ModelError(
                    "a local tokenizer is configured but `transformers` is not installed: "
                    "pip install transformers, or leave the tokenizer unset to count tokens with the server's /tokenize"
                ) from None

            def load() -> Any:
                # Once per client, however many rollouts ask at the same moment.
                with self._tokenizer_lock:
                    if self._tokenizer is None:
                        self._tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer)
                    return self._tokenizer

            try:
                await asyncio.to_thread(load)
            except Exception as exc:  # transformers raises many kinds (OSError, ValueError, HF errors)
                raise ModelError(f"cannot load the tokenizer {self.config.tokenizer!r}: {exc}") from None
        return self._tokenizer


def _single(sampling: SamplingParams | None) -> SamplingParams:
    sampling = sampling or SamplingParams()
    if sampling.n != 1:
        raise ValueError("complete() and chat() return one reply; use complete_n() for n > 1")
    return sampling
