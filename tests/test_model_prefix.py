"""Prefix reuse: every turn's prompt must extend the previous prompt + reply byte for byte."""

from __future__ import annotations

import asyncio

import pytest

from cwm_agent.model.client import ModelClient, ModelConfig, SamplingParams
from cwm_agent.model.scripted_server import ScriptedRequest, ScriptedServer
from cwm_agent.prompts.render import Message, render_continuation, render_prompt

pytestmark = pytest.mark.timeout(60)

SYSTEM = Message(role="system", content="You are a helpful AI assistant. (scripted test system prompt)")


def scripted_reply(request: ScriptedRequest) -> str:
    # Ends with the stop string, as the model would: the server cuts it off like vLLM.
    return f"thinking about step {request.index}\n</think>\n<tool: bash>\necho {request.index}\n</tool><|eot_id|>"


async def episode(client: ModelClient, task: int, turns: int) -> list:
    prompt = render_prompt([SYSTEM, Message(role="user", content=f"Solve task {task}.")])
    done = []
    for turn in range(turns):
        completion = await client.complete(prompt, SamplingParams(max_tokens=1000))
        done.append(completion)
        observation = Message(role="tool: bash", content=f"<output>\nturn {turn}\n</output>")
        prompt += render_continuation(completion.text, [observation])
    return done


def test_prefix_reuse_is_total_over_a_20_turn_episode():
    with ScriptedServer(policy=scripted_reply) as server:
        completions = asyncio.run(episode(ModelClient(ModelConfig(url=server.url)), task=1, turns=20))
        reuse = server.prefix_reuse()
    assert reuse == [None] + [1.0] * 19
    # What vLLM's prefix cache would hit: all of the previous context but the last partial block.
    for before, after in zip(completions, completions[1:]):
        assert after.cached_tokens >= before.prompt_tokens + before.completion_tokens - 16
    assert completions[-1].cached_tokens / completions[-1].prompt_tokens > 0.9


def test_interleaved_rollouts_sharing_one_client_each_extend_their_own_history():
    async def rollouts():
        client = ModelClient(ModelConfig(url=server.url, max_concurrency=3))
        return await asyncio.gather(*(episode(client, task=1, turns=8) for _ in range(4)))

    with ScriptedServer(policy=scripted_reply) as server:
        asyncio.run(rollouts())
        reuse = server.prefix_reuse()
        assert server.max_in_flight <= 3
    # Four rollouts of the same task start from the same prompt: four first turns, then full reuse.
    assert reuse.count(None) == 4 and all(r == 1.0 for r in reuse if r is not None) and len(reuse) == 32


def test_re_rendering_a_reply_breaks_prefix_reuse_and_the_cache():
    with ScriptedServer(policy=scripted_reply) as server:

        async def go():
            client = ModelClient(ModelConfig(url=server.url))
            prompt = render_prompt([SYSTEM, Message(role="user", content="Solve task 2.")])
            first = await client.complete(prompt)
            # A history rebuilt without the thinking: the server's cache stops at the old prompt.
            action = first.text.split("</think>\n", 1)[1]
            second = await client.complete(
                prompt + render_continuation(action, [Message(role="user", content="go on")])
            )
            return first, second

        first, second = asyncio.run(go())
        reuse = server.prefix_reuse()
    assert reuse[0] is None and 0.5 < reuse[1] < 1.0
    assert second.cached_tokens < first.prompt_tokens + first.completion_tokens - 16
