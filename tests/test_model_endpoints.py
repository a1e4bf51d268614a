"""Several model servers: a rollout never switches server, new rollouts go where fewest requests wait.

Two real scripted servers over real HTTP; the pool is driven the way the agent drives a client
(many rollouts at once, several turns each, every prompt naming its rollout).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from cwm_agent.errors import UserError
from cwm_agent.model.client import ModelConfig, ModelError, SamplingParams
from cwm_agent.model.endpoints import EndpointPool, LoadTable, endpoint_urls
from cwm_agent.model.scripted_server import ScriptedServer

FAST = SamplingParams(max_tokens=16)


def policy(request):
    """Slow (0.4 s) when the prompt says so; the reply names nothing about the server."""
    return {"text": "ok", "latency": 0.4 if "slow" in request.prompt else 0.0}


@pytest.fixture
def servers():
    with ScriptedServer(policy=policy) as a, ScriptedServer(policy=policy) as b:
        yield a, b


def rollouts_seen(server: ScriptedServer) -> set[str]:
    return {re.match(r"rollout (\S+)", r.prompt).group(1) for r in server.generation_requests()}


def test_each_rollout_stays_on_one_server_and_the_rollouts_spread(servers):
    a, b = servers

    async def main():
        async with EndpointPool(ModelConfig(url=a.url), [a.url, b.url]) as pool:
            await pool.check()

            async def rollout(n: int) -> str:
                async with pool.rollout(f"r{n}") as client:
                    for turn in range(4):
                        await client.complete(f"rollout r{n} turn {turn} {'slow' if n % 3 == 0 else ''}", FAST)
                        await asyncio.sleep(0.01 * (n % 4))  # a tool call between turns
                    return client.url

            return await asyncio.gather(*(rollout(n) for n in range(12)))

    urls = asyncio.run(main())
    on_a, on_b = rollouts_seen(a), rollouts_seen(b)
    assert not on_a & on_b, f"rollouts that switched server: {sorted(on_a & on_b)}"
    assert on_a | on_b == {f"r{n}" for n in range(12)}
    assert len(on_a) >= 4 and len(on_b) >= 4, (sorted(on_a), sorted(on_b))  # the load spreads
    for n, url in enumerate(urls):  # the client a rollout was given is the server that saw all its turns
        assert (f"r{n}" in on_a) == (url == a.url)
    assert all(len([r for r in s.generation_requests() if f"rollout r{n} " in r.prompt]) in (0, 4)
               for s in (a, b) for n in range(12))  # fmt: skip


def test_a_new_rollout_goes_to_the_server_with_fewer_requests_outstanding(servers):
    """r0 (on A, the first) waits for a slow reply; r1 (on B) is between turns. One rollout each, so
    only the outstanding requests tell them apart: r2 goes to B. Once r0's reply is in, r3 goes to A."""
    a, b = servers

    async def main():
        async with EndpointPool(ModelConfig(url=a.url), [a.url, b.url]) as pool:
            await pool.check()
            got = {}
            async with pool.rollout("r0") as c0, pool.rollout("r1") as c1:
                got["r0"], got["r1"] = c0.url, c1.url
                await c1.complete("rollout r1 turn 0", FAST)
                slow = asyncio.ensure_future(c0.complete("rollout r0 slow", FAST))
                await asyncio.sleep(0.1)
                async with pool.rollout("r2") as c2:
                    got["r2"] = c2.url
                await slow
                async with pool.rollout("r3") as c3:
                    got["r3"] = c3.url
            return got

    got = asyncio.run(main())
    assert (got["r0"], got["r1"]) == (a.url, b.url)
    assert got["r2"] == b.url, "r2 went to the server with a request outstanding"
    assert got["r3"] == a.url, "r3 did not go back to the first server once its request was answered"


def test_load_table_keeps_a_retried_rollout_on_its_endpoint_and_forgets_its_lost_requests():
    table = LoadTable(2)
    assert table.acquire("x") == 0
    table.started(0, "x")
    assert table.acquire("y") == 1  # 0 has a request outstanding
    table.started(1, "y")
    table.started(1, "y")
    # x's host was lost mid-request; the item is retried: same endpoint, its old request no longer counts
    assert table.acquire("x") == 0
    assert table.outstanding == [0, 2]
    assert table.acquire("z") == 0
    table.finished(1, "y")
    table.finished(1, "y")
    table.release("y")
    assert table.snapshot() == {"outstanding": [0, 0], "rollouts": [2, 0], "assigned": [2, 1]}


def test_urls_from_flags_and_a_file(tmp_path: Path):
    listed = tmp_path / "servers.txt"
    listed.write_text("# our two boxes\nhttp://gpu-a:8000/v1\n\ngpu-b:8000  # the second\n")
    assert endpoint_urls(["http://gpu-c:8000"], listed) == [
        "http://gpu-c:8000/v1",
        "http://gpu-a:8000/v1",
        "http://gpu-b:8000/v1",
    ]
    assert endpoint_urls(None) is None
    with pytest.raises(UserError, match="named twice"):
        endpoint_urls(["http://gpu-a:8000/v1"], listed)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(UserError, match="lists no URL"):
        endpoint_urls(None, empty)
    with pytest.raises(UserError, match="cannot read"):
        endpoint_urls(None, tmp_path / "missing.txt")


def test_check_names_the_server_that_does_not_answer(servers):
    a, _ = servers
    dead = ScriptedServer().start()
    dead_url = dead.url
    dead.stop()

    async def main():
        async with EndpointPool(ModelConfig(url=a.url, connect_timeout=1.0), [a.url, dead_url]) as pool:
            await pool.check()

    with pytest.raises(ModelError, match=re.escape(dead_url)):
        asyncio.run(main())
