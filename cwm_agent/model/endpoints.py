"""Several model servers of one model: a rollout keeps one server, new rollouts go to the least busy.

vLLM's prefix cache lives in one server: a rollout whose every prompt extends its previous prompt +
reply hits it on every turn, but only if every turn goes to the same server. So routing is per
*rollout*, not per request: `EndpointPool.rollout(key)` picks a server once (the one with the fewest
generation requests outstanding, ties to the one with fewest rollouts bound to it, then the first),
and every request made inside the block goes there. The block's end releases the rollout.

The counts live in a `LoadTable`. One process shares one table through a `LocalRouter`; workers on
other hosts share one table through a router an executor provides (`cwm_agent.runs.executor`: a Ray
actor), so "least busy" is measured over the whole cluster. A router only counts and picks; each
process still opens its own HTTP clients (`ModelClient`, one per server, shared by the process's
rollouts so that `max_concurrency` bounds each server's load from this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from cwm_agent.errors import UserError
from cwm_agent.model.client import ModelClient, ModelConfig, _normalize_url

_ROLLOUT: contextvars.ContextVar[str | None] = contextvars.ContextVar("cwm_agent_rollout", default=None)
"""The rollout whose requests are being made (set by `EndpointPool.rollout`, inherited by its tasks); only
used to forget a lost attempt's requests when its rollout is retried."""


class EndpointsError(UserError):
    """The list of model servers is unusable (an empty or unreadable file, a repeated URL)."""


def read_urls_file(path: Path) -> list[str]:
    """Model server URLs from a file: one per line; blank lines and `#` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EndpointsError(f"--model-urls-file {path}: cannot read it ({exc.strerror or exc}).") from None
    urls = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    urls = [u for u in urls if u]
    if not urls:
        raise EndpointsError(f"--model-urls-file {path} lists no URL: write one server URL per line.")
    return urls


def endpoint_urls(urls: Sequence[str] | None, urls_file: Path | None = None) -> list[str] | None:
    """The servers named on the command line (repeated --model-url, then the file's), normalized and
    checked for repeats; None when none was named (the config's `model.url` is used)."""
    named = list(urls or []) + (read_urls_file(urls_file) if urls_file is not None else [])
    if not named:
        return None
    normalized = [_normalize_url(u) for u in named]
    seen: set[str] = set()
    for url in normalized:
        if url in seen:
            raise EndpointsError(f"the model server {url} is named twice: name each server once.")
        seen.add(url)
    return normalized


class LoadTable:
    """Which rollout is bound to which endpoint, and the generation requests outstanding per endpoint.

    Plain, synchronous and picklable: the same object serves one process (`LocalRouter`) or a cluster
    (inside a Ray actor). A key acquired again before its release (a work item retried after its host
    was lost) keeps its endpoint, and the requests it had outstanding are dropped: they died with the host.
    """

    def __init__(self, endpoints: int) -> None:
        if endpoints < 1:
            raise ValueError("a LoadTable needs at least one endpoint")
        self.bound: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        """Outstanding requests per bound rollout (to drop them when the rollout is retried)."""
        self.outstanding = [0] * endpoints
        self.rollouts = [0] * endpoints
        self.assigned = [0] * endpoints
        """Rollouts ever bound to each endpoint (for reports)."""

    def acquire(self, key: str) -> int:
        if key in self.bound:
            index = self.bound[key]
            self.outstanding[index] = max(0, self.outstanding[index] - self.requests.pop(key, 0))
            return index
        index = min(range(len(self.outstanding)), key=lambda i: (self.outstanding[i], self.rollouts[i], i))
        self.bound[key] = index
        self.rollouts[index] += 1
        self.assigned[index] += 1
        return index

    def release(self, key: str) -> None:
        index = self.bound.pop(key, None)
        self.requests.pop(key, None)
        if index is not None:
            self.rollouts[index] -= 1

    def started(self, index: int, key: str | None = None) -> None:
        self.outstanding[index] += 1
        if key is not None and self.bound.get(key) == index:
            self.requests[key] = self.requests.get(key, 0) + 1

    def finished(self, index: int, key: str | None = None) -> None:
        self.outstanding[index] = max(0, self.outstanding[index] - 1)
        if key is not None and self.requests.get(key, 0) > 0:
            self.requests[key] -= 1

    def snapshot(self) -> dict[str, list[int]]:
        return {"outstanding": list(self.outstanding), "rollouts": list(self.rollouts), "assigned": list(self.assigned)}


class Router(Protocol):
    """Where an `EndpointPool` asks which endpoint a rollout gets and reports its requests."""

    async def acquire(self, key: str) -> int:
        """The endpoint index for rollout `key` (the same one for as long as `key` is bound)."""

    def release(self, key: str) -> None:
        """Rollout `key` has ended."""

    def started(self, index: int, key: str | None = None) -> None:
        """A generation request to endpoint `index` is outstanding (made by rollout `key`, when known)."""

    def finished(self, index: int, key: str | None = None) -> None:
        """One of those is answered (or failed)."""


class LocalRouter:
    """A `Router` over a `LoadTable` in this process."""

    def __init__(self, endpoints: int) -> None:
        self.table = LoadTable(endpoints)

    async def acquire(self, key: str) -> int:
        return self.table.acquire(key)

    def release(self, key: str) -> None:
        self.table.release(key)

    def started(self, index: int, key: str | None = None) -> None:
        self.table.started(index, key)

    def finished(self, index: int, key: str | None = None) -> None:
        self.table.finished(index, key)


class EndpointClient(ModelClient):
    """A `ModelClient` for endpoint `index` of a pool: reports each generation request to the pool's router."""

    def __init__(self, config: ModelConfig, router: Router, index: int) -> None:
        super().__init__(config)
        self._router = router
        self.index = index

    async def _call(self, method: str, url: str, body: Any, parse: Any, what: str, *, limited: bool, **kwargs: Any):
        if not limited:  # only generations count as load
            return await super()._call(method, url, body, parse, what, limited=limited, **kwargs)
        key = _ROLLOUT.get()
        self._router.started(self.index, key)
        try:
            return await super()._call(method, url, body, parse, what, limited=limited, **kwargs)
        finally:
            self._router.finished(self.index, key)


class EndpointPool:
    """Clients for one or more servers of the same model, routed per rollout (see the module docstring).

    `urls` defaults to the config's `model.url`. `router` defaults to a `LocalRouter` of this pool;
    executors that spread rollouts over processes pass one router shared by all of them.
    """

    def __init__(self, config: ModelConfig, urls: Sequence[str] | None = None, router: Router | None = None) -> None:
        self.urls = [_normalize_url(u) for u in (urls or [config.url])]
        self.router: Router = router if router is not None else LocalRouter(len(self.urls))
        self.clients = [
            EndpointClient(config.model_copy(update={"url": u}), self.router, i) for i, u in enumerate(self.urls)
        ]

    def __len__(self) -> int:
        return len(self.clients)

    @contextlib.asynccontextmanager
    async def rollout(self, key: str) -> AsyncIterator[ModelClient]:
        """The client of the endpoint rollout `key` keeps; every request made in the block is counted."""
        index = await self.router.acquire(key)
        token = _ROLLOUT.set(key)
        try:
            yield self.clients[index]
        finally:
            _ROLLOUT.reset(token)
            self.router.release(key)

    async def check(self, wait: float = 0.0) -> str:
        """Ask every server which model it serves (side by side); all must serve the same one.

        Returns the model id (the config's, or what the first server serves) and sets it on every client.
        Raises the first server's error naming its URL when one does not answer.
        """
        first = self.clients[0]
        model = await first.check(wait)
        for client in self.clients[1:]:
            client.model = client.model or model
        results = await asyncio.gather(*(c.check(wait) for c in self.clients[1:]), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # names the server: it is unreachable, or serves another model
        return model

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients), return_exceptions=True)

    async def __aenter__(self) -> EndpointPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
