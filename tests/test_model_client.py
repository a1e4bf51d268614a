"""The async model client against the scripted OpenAI-compatible server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from cwm_agent.model.client import (
    CWM_STOP_TOKEN_IDS,
    EOT,
    ContextLengthError,
    ModelClient,
    ModelConfig,
    ModelError,
    ModelUnavailableError,
    SamplingParams,
)
from cwm_agent.model.scripted_server import Fault, Reply, ScriptedServer

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


def fast_config(url: str, **overrides) -> ModelConfig:
    """Retries that take milliseconds, so fault tests stay fast."""
    settings = dict(url=url, retry_initial_delay=0.01, retry_max_delay=0.05, request_timeout=10.0)
    settings.update(overrides)
    return ModelConfig(**settings)


def test_complete_sends_the_prompt_as_is_with_cwm_sampling_and_reads_usage():
    prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nfix the bug<|eot_id|>"
    with ScriptedServer(
        ["<think>\nlook\n</think>\n<tool: bash>\nls\n</tool><|eot_id|>ignored"], block_size=1
    ) as server:

        async def go():
            async with ModelClient(fast_config(server.url)) as client:
                return await client.complete(prompt, SamplingParams(seed=7))

        done = run(go())
    body = server.generation_requests()[0].body
    assert body["prompt"] == prompt
    assert body["model"] == "cwm-scripted"  # resolved from /v1/models
    assert body["max_tokens"] == 65536 and body["temperature"] == 1.0 and body["top_p"] == 0.95
    assert body["stop"] == [EOT] and body["stop_token_ids"] == CWM_STOP_TOKEN_IDS and body["seed"] == 7
    assert body["skip_special_tokens"] is False and body["include_stop_str_in_output"] is False
    assert body["add_special_tokens"] is False  # the prompt has its BOS; vLLM would add another
    assert done.text == "<think>\nlook\n</think>\n<tool: bash>\nls\n</tool>"
    assert done.finish_reason == "stop" and done.stop_reason == EOT
    assert done.prompt_tokens == server.generation_requests()[0].prompt_tokens == 12
    assert done.completion_tokens > 0 and done.cached_tokens == 0 and done.attempts == 1


def test_cached_tokens_count_the_prefix_shared_with_an_earlier_prompt_and_reply():
    first = "<|begin_of_text|>one two three"
    with ScriptedServer([" four five", "six"], block_size=1) as server:

        async def go():
            async with ModelClient(fast_config(server.url)) as client:
                a = await client.complete(first)
                b = await client.complete(first + a.text + EOT + " more words")
                return a, b

        a, b = run(go())
    # The second prompt repeats the first prompt (6 tokens) and the reply (" four five": 4 tokens).
    assert a.cached_tokens == 0
    assert b.prompt_tokens == 6 + 4 + 1 + 4 and b.cached_tokens == 10


def test_vllm_block_size_rounds_cached_tokens_down():
    prompt = "<|begin_of_text|>" + " word" * 40  # 81 tokens
    with ScriptedServer(["x", "y"]) as server:  # default block_size 16

        async def go():
            async with ModelClient(fast_config(server.url)) as client:
                await client.complete(prompt)
                return await client.complete(prompt + "x tail")

        second = run(go())
    assert second.cached_tokens == 80  # 82 shared tokens, whole blocks only


@pytest.mark.parametrize(
    "fault", [Fault.http(500), Fault.http(503), Fault.http(429), Fault.drop(), Fault.truncate(), Fault.malformed()]
)
def test_each_transient_fault_is_retried(fault):
    with ScriptedServer([fault, "recovered"]) as server:
        done = run(ModelClient(fast_config(server.url, model="cwm-scripted")).complete("hi"))
    assert done.text == "recovered" and done.attempts == 2
    assert [r.fault for r in server.generation_requests()] == [server.requests[0].fault, None]
    assert server.requests[0].fault is not None


def test_a_burst_of_faults_within_the_retry_limit_succeeds():
    faults = [Fault.http(500), Fault.http(429), Fault.drop(), Fault.truncate(), Fault.malformed()]
    with ScriptedServer(["finally"]) as server:
        server.inject_faults(faults)
        done = run(ModelClient(fast_config(server.url, model="cwm-scripted", max_retries=5)).complete("hi"))
    assert done.text == "finally" and done.attempts == 6
    assert len(server.generation_requests()) == 6


def test_exhausted_retries_raise_unavailable_with_a_helpful_message():
    with ScriptedServer(["never sent"]) as server:
        server.inject_faults([Fault.http(503, "engine is overloaded")] * 10)
        with pytest.raises(ModelUnavailableError) as caught:
            run(ModelClient(fast_config(server.url, model="cwm-scripted", max_retries=2)).complete("hi"))
    message = str(caught.value)
    assert server.url in message and "engine is overloaded" in message and "3 attempts" in message
    assert "cwm-agent serve" in message and "--model-url" in message
    assert len(server.generation_requests()) == 3


def test_retry_total_seconds_bounds_the_time_spent_retrying():
    with ScriptedServer([]) as server:
        server.inject_faults([Fault.http(500)] * 1000)
        config = fast_config(
            server.url,
            model="cwm-scripted",
            max_retries=1000,
            retry_total_seconds=0.5,
            retry_initial_delay=0.1,
            retry_max_delay=0.2,
        )
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError):
            run(ModelClient(config).complete("hi"))
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert 2 <= len(server.generation_requests()) < 20


def test_waiting_for_a_concurrency_slot_does_not_use_up_the_retry_budget():
    # Request 0 holds the only slot for 1 s; request 1 then meets one 503 and must still be retried.
    script = {0: Reply("first", latency=1.0), 1: Fault.http(503, "busy")}
    with ScriptedServer(policy=lambda request: script.get(request.index, "second")) as server:
        config = fast_config(server.url, model="cwm-scripted", max_concurrency=1, retry_total_seconds=0.5)

        async def go():
            client = ModelClient(config)
            return await asyncio.gather(client.complete("a"), client.complete("b"))

        first, second = run(go())
    assert (first.text, second.text, second.attempts) == ("first", "second", 2)


def test_a_long_generation_that_then_fails_is_still_retried():
    # The first attempt runs 1 s (a long generation) and then fails: the retry budget (0.5 s) counts
    # from that failure, so the request is retried and succeeds.
    with ScriptedServer([Fault("status", status=503, latency=1.0, message="worker died"), "recovered"]) as server:
        config = fast_config(server.url, model="cwm-scripted", retry_total_seconds=0.5)
        result = run(ModelClient(config).complete("a"))
    assert (result.text, result.attempts) == ("recovered", 2)


def test_a_client_error_is_raised_at_once_without_retry():
    with ScriptedServer(["unused"]) as server:
        server.inject_faults([Fault.http(400, "stop must be a list of strings")])
        with pytest.raises(ModelError) as caught:
            run(ModelClient(fast_config(server.url, model="cwm-scripted")).complete("hi"))
    assert not isinstance(caught.value, ModelUnavailableError)
    assert "stop must be a list of strings" in str(caught.value) and "HTTP 400" in str(caught.value)
    assert len(server.generation_requests()) == 1


def test_an_unknown_model_is_a_client_error():
    with ScriptedServer(["unused"]) as server:
        with pytest.raises(ModelError, match="does not exist"):
            run(ModelClient(fast_config(server.url, model="facebook/cwm")).complete("hi"))
        with pytest.raises(ModelError, match="serves cwm-scripted, not facebook/cwm"):
            run(ModelClient(fast_config(server.url, model="facebook/cwm")).check())


def test_a_request_that_takes_too_long_times_out_and_is_retried_within_limits():
    with ScriptedServer(["slow"], latency=3.0) as server:
        # The deadline (by default request_timeout, for the whole request) leaves room for the retry.
        config = fast_config(server.url, model="cwm-scripted", request_timeout=0.3, max_retries=1, request_deadline=5)
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError, match="no reply in time"):
            run(ModelClient(config).complete("hi"))
        assert time.monotonic() - started < 2.0
        assert len(server.generation_requests()) == 2


def test_concurrency_limit_is_shared_by_all_callers_of_one_client():
    async def burst(client: ModelClient, count: int):
        return await asyncio.gather(*(client.complete(f"rollout {i}") for i in range(count)))

    with ScriptedServer(policy=lambda request: f"reply {request.index}", latency=0.25) as server:
        started = time.monotonic()
        replies = run(burst(ModelClient(fast_config(server.url, max_concurrency=2)), 6))
        elapsed = time.monotonic() - started
        assert server.max_in_flight == 2
        assert elapsed >= 0.7  # three waves of two
        assert sorted(r.text for r in replies) == [f"reply {i}" for i in range(6)]
    # Without the limit the same server sees all six at once: the measure above is real.
    with ScriptedServer(policy=lambda request: "x", latency=0.25) as server:
        run(burst(ModelClient(fast_config(server.url, max_concurrency=64)), 6))
        assert server.max_in_flight == 6


def test_count_tokens_uses_the_server_tokenize_endpoint_without_special_tokens():
    with ScriptedServer([]) as server:

        async def go():
            async with ModelClient(fast_config(server.url)) as client:
                return await client.count_tokens("<|begin_of_text|>hello, world"), await client.tokenize("<|eot_id|>")

        count, ids = run(go())
        tokenize = [r for r in server.requests if r.endpoint == "/tokenize"]
    assert count == 5  # <|begin_of_text|> hello , " " world
    assert ids == [128009]
    assert tokenize[0].body["add_special_tokens"] is False and tokenize[0].body["model"] == "cwm-scripted"


def test_token_counts_are_retried_and_a_server_without_tokenize_says_what_to_do():
    with ScriptedServer([]) as server:
        server.inject_faults([Fault.http(503), Fault.drop()], endpoint="tokenize")
        assert run(ModelClient(fast_config(server.url, model="cwm-scripted")).count_tokens("a b")) == 3
        assert [r.fault for r in server.requests] == ["http_503", "drop", None]
        server.inject_faults([Fault.http(404, "Not Found")], endpoint="tokenize")
        with pytest.raises(ModelError, match="no /tokenize: configure a local tokenizer"):
            run(ModelClient(fast_config(server.url, model="cwm-scripted")).count_tokens("a b"))


def test_a_configured_local_tokenizer_without_transformers_says_what_to_do():
    try:
        import transformers  # noqa: F401

        pytest.skip("transformers is installed here")
    except ImportError:
        pass
    with pytest.raises(ModelError, match="transformers"):
        run(ModelClient(ModelConfig(tokenizer="/nonexistent")).count_tokens("hi"))


def test_check_against_a_closed_port_fails_fast_with_how_to_start_a_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as caught:
        run(ModelClient(ModelConfig(url=f"http://127.0.0.1:{port}/v1")).check())
    assert time.monotonic() - started < 2.0
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}/v1" in message and "not reachable" in message
    assert "cwm-agent serve MODEL" in message and "--model-url" in message


def test_check_returns_the_served_model_and_its_context_window():
    with ScriptedServer([], model="facebook/cwm", max_model_len=4096) as server:
        client = ModelClient(ModelConfig(url=server.url.removesuffix("/v1")))  # /v1 is added
        assert run(client.check()) == "facebook/cwm"
    assert client.max_model_len == 4096


def test_max_tokens_is_shrunk_to_what_the_context_window_leaves():
    prompt = "<|begin_of_text|>" + " w" * 20  # 41 tokens
    with ScriptedServer(["a b c d e f g h i j k l m n o p"], max_model_len=50, block_size=1) as server:
        client = ModelClient(fast_config(server.url))
        done = run(client.complete(prompt))  # asks for 65536, as CWM's settings say
        bodies = [r.body["max_tokens"] for r in server.generation_requests()]
        assert bodies == [65536, 9] and server.requests[-2].status == 400
        assert done.finish_reason == "length" and done.completion_tokens == 9
        # Knowing the prompt's size, the client asks for what fits straight away.
        server.add_replies(["short"])
        run(client.complete(prompt, prompt_tokens=41))
        assert server.generation_requests()[-1].body["max_tokens"] == 9
        with pytest.raises(ContextLengthError) as caught:
            run(client.complete(prompt + " w" * 10))
    assert caught.value.max_model_len == 50 and caught.value.prompt_tokens == 61


def test_chat_endpoint_returns_the_message_content():
    with ScriptedServer(["hello there"]) as server:
        done = run(ModelClient(fast_config(server.url)).chat([{"role": "user", "content": "hi"}]))
    assert done.text == "hello there"
    assert server.generation_requests()[0].endpoint == "/v1/chat/completions"
    assert server.generation_requests()[0].body["messages"] == [{"role": "user", "content": "hi"}]


def test_one_client_works_across_event_loops():
    with ScriptedServer(["one", "two"]) as server:
        client = ModelClient(fast_config(server.url))
        assert run(client.check()) == "cwm-scripted"
        assert run(client.complete("a")).text == "one"
        assert run(client.complete("b")).text == "two"


def test_a_client_that_forgets_max_tokens_gets_16_tokens_like_vllm():
    with ScriptedServer([" ".join(["tok"] * 30)]) as server:
        reply = httpx.post(f"{server.url}/completions", json={"prompt": "hi"}, timeout=5).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 16


def test_a_failing_policy_answers_500_with_its_error():
    def policy(request):
        raise KeyError("no such turn")

    with ScriptedServer(policy=policy) as server:
        reply = httpx.post(f"{server.url}/completions", json={"prompt": "a", "max_tokens": 5}, timeout=5)
    assert reply.status_code == 500 and "the policy failed on request #0: KeyError" in reply.json()["error"]["message"]


def test_an_exhausted_script_answers_500_naming_the_request():
    with ScriptedServer(["only"]) as server:
        httpx.post(f"{server.url}/completions", json={"prompt": "a", "max_tokens": 5}, timeout=5)
        reply = httpx.post(f"{server.url}/completions", json={"prompt": "b", "max_tokens": 5}, timeout=5)
    assert reply.status_code == 500 and "no reply left for generation request #1" in reply.json()["error"]["message"]


def test_a_server_that_accepts_and_never_answers_costs_at_most_the_request_deadline():
    with ScriptedServer(["too late"], latency=30.0) as server:
        config = fast_config(server.url, model="cwm-scripted", request_timeout=3600.0, request_deadline=1.0)
        started = time.monotonic()
        with pytest.raises(
            ModelUnavailableError, match=r"did not answer completions within 1s \(model.request_deadline\)"
        ):
            run(ModelClient(config).complete("hi"))
        assert time.monotonic() - started < 3.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_circuit_breaker_opens_when_every_request_fails_for_breaker_seconds():
    from cwm_agent.model.client import ModelDownError

    port = _closed_port()
    config = fast_config(f"http://127.0.0.1:{port}/v1", model="m", max_retries=1000, breaker_seconds=1.0)
    client = ModelClient(config)

    async def go():
        started = time.monotonic()
        with pytest.raises(
            ModelDownError, match=r"is down: every request has failed for 1s \(model.breaker_seconds: 1"
        ):
            await client.complete("hi")
        assert 0.9 < time.monotonic() - started < 3.0
        started = time.monotonic()
        with pytest.raises(ModelDownError):  # open: later requests fail at once
            await client.complete("again")
        assert time.monotonic() - started < 0.1

    run(go())


def test_a_success_resets_the_breaker_clock():
    with ScriptedServer(["ok"] * 3) as server:
        server.inject_faults([Fault.http(503)] * 3)
        config = fast_config(server.url, model="cwm-scripted", breaker_seconds=0.4)
        client = ModelClient(config)

        async def go():
            assert (await client.complete("a")).text == "ok"  # 3 failures over ~0.3 s, then a success
            await asyncio.sleep(0.5)
            server.inject_faults([Fault.http(503)])
            assert (await client.complete("b")).text == "ok"  # the clock restarted at the success

        run(go())
