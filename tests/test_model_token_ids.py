"""Token-id prompts: the client's id path against the scripted server over real HTTP on 127.0.0.1,
and the server's check that each id prompt of a rollout extends its previous prompt + reply ids."""

from __future__ import annotations

import asyncio

import pytest

from cwm_agent.model.client import ModelClient, ModelConfig, ModelError, SamplingParams
from cwm_agent.model.scripted_server import Reply, ScriptedServer
from cwm_agent.model.tokenizer import TokenizerNotFoundError
from cwm_agent.prompts.render import Message, render_pieces

pytestmark = pytest.mark.timeout(60)
EOT_ID = 128009


def run(coro):
    return asyncio.run(coro)


def config(url: str, **overrides) -> ModelConfig:
    return ModelConfig(url=url, retry_initial_delay=0.01, retry_max_delay=0.05, request_timeout=10.0, **overrides)


def new_messages(observation: str) -> list[Message]:
    return [Message.tool("bash", f"<output>\n{observation}\n</output>")]


def test_complete_ids_sends_the_ids_as_they_are_and_returns_the_reply_ids(tok):
    prompt = tok.encode_pieces(render_pieces([Message.system("sys"), Message.user("fix it")]))
    reply = "<think>\nlook\n</think>\n<tool: bash>\nls\n</tool>"
    with ScriptedServer([reply + "<|eot_id|>never sent"], tokenizer=tok, block_size=1) as server:

        async def go():
            async with ModelClient(config(server.url)) as client:
                return await client.complete_ids(prompt, SamplingParams(seed=3))

        done = run(go())
    sent = server.generation_requests()[0]
    assert sent.body["prompt"] == prompt and sent.body["return_token_ids"] is True
    assert sent.prompt_ids == prompt  # no BOS added in front of an id prompt
    assert done.text == reply and done.finish_reason == "stop"
    # The reply's ids as the model sampled them: they end with the stop id the text leaves out.
    assert done.token_ids == tok.encode(reply) + [EOT_ID]
    assert done.prompt_tokens == len(prompt) and done.completion_tokens == len(done.token_ids)


def test_a_reply_cut_by_max_tokens_has_no_stop_id(tok):
    with ScriptedServer(["one two three four five six seven"], tokenizer=tok) as server:

        async def go():
            async with ModelClient(config(server.url)) as client:
                return await client.complete_ids([128000, 9906], SamplingParams(max_tokens=3))

        done = run(go())
    assert done.finish_reason == "length" and len(done.token_ids) == 3 and EOT_ID not in done.token_ids
    assert done.text == tok.decode(done.token_ids)


def test_a_three_turn_rollout_built_from_ids_extends_exactly_and_hits_the_cache(tok):
    replies = [
        "\nI will list files.\n</think>\n<tool: bash>\nls\n</tool>",
        " Now read it.\n</think>\n<tool: bash>\ncat a\n</tool>",
        "done",
    ]
    with ScriptedServer(replies, tokenizer=tok, block_size=1, reject_prefix_violations=True) as server:

        async def go():
            async with ModelClient(config(server.url)) as client:
                ids = tok.encode_pieces(render_pieces([Message.system("sys"), Message.user("fix it")]))
                outs = []
                for observation in ("a\nb\n", "x = 1\n", None):
                    done = await client.complete_ids(ids, rollout="r1")
                    outs.append(done)
                    if observation is not None:
                        new = tok.encode_pieces(render_pieces(new_messages(observation), bos=False))
                        ids = ids + done.token_ids + new
                return outs

        outs = run(go())
    assert server.prefix_violations == []
    for before, after in zip(outs, outs[1:]):
        assert after.cached_tokens == before.prompt_tokens + before.completion_tokens
    assert all(r.body["user"] == "r1" for r in server.generation_requests())


def test_re_tokenizing_the_reply_text_is_a_prefix_violation(tok):
    # The reply starts with a newline right after "<think>\n": re-encoding prompt text + reply text
    # merges ">\n" + "\n" into one token, so the next prompt no longer extends the ids sent before.
    first = render_pieces([Message.system("sys"), Message.user("fix it")])
    with ScriptedServer(["\nlook\n</think>\n<tool: bash>\nls\n</tool>", "ok"], tokenizer=tok) as server:

        async def go():
            async with ModelClient(config(server.url)) as client:
                done = await client.complete_ids(tok.encode_pieces(first))
                text = "".join(p.text for p in first) + done.text + "<|eot_id|>"
                drifted = server._encode_text(text) + tok.encode_pieces(render_pieces(new_messages("a"), bos=False))
                await client.complete_ids(drifted)

        run(go())
        [violation] = server.prefix_violations
        assert violation.rollout == "" and violation.request == 2  # /v1/models, then the two generations
        assert violation.at == len(tok.encode_pieces(first)) - 1  # the merged ">\n\n"
        assert "does not extend" in violation.describe()

        server.reject_prefix_violations = True
        server.add_replies(["never"])

        async def again():
            async with ModelClient(config(server.url)) as client:
                await client.complete_ids([128000, 1, 2, 3])

        with pytest.raises(ModelError, match="HTTP 400.*does not extend"):
            run(again())


def test_rollouts_are_told_apart_by_the_user_field():
    with ScriptedServer(fallback="reply") as server:
        ids = server.tokenizer.encode("<|begin_of_text|>same start for both")

        async def go(swap: bool):
            async with ModelClient(config(server.url)) as client:
                a = await client.complete_ids(ids, rollout="a")
                b = await client.complete_ids(ids, rollout="b")
                extend_a = ids + a.token_ids + [5]
                extend_b = ids + b.token_ids + [6]
                await client.complete_ids(extend_b if swap else extend_a, rollout="a")
                await client.complete_ids(extend_a if swap else extend_b, rollout="b")

        run(go(swap=False))
        assert server.prefix_violations == []
        # Both replies are "reply" with the same ids, so a swap is only caught by the extra id.
        run(go(swap=True))
        assert [v.rollout for v in server.prefix_violations] == ["a", "b"]


def test_the_default_script_tokenizer_serves_ids_too():
    with ScriptedServer([Reply("hello there")]) as server:  # the probe uses no scripted reply
        prompt = server.tokenizer.encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")

        async def go():
            async with ModelClient(config(server.url)) as client:
                return await client.supports_token_ids(), await client.complete_ids(prompt)

        ok, done = run(go())
    assert ok and done.token_ids == server.tokenizer.encode("hello there") + [EOT_ID]


@pytest.mark.parametrize("ids_api", ["return_token_ids", "logprobs", "none", "no_id_prompts"])
def test_supports_token_ids_probes_the_server_and_complete_ids_follows(ids_api):
    with ScriptedServer(fallback="fine") as server:
        server.ids_api = ids_api

        async def go():
            async with ModelClient(config(server.url)) as client:
                ok = await client.supports_token_ids()
                done = await client.complete_ids([128000, 42]) if ok else None
                return ok, done

        ok, done = run(go())
    assert ok == (ids_api in ("return_token_ids", "logprobs"))
    if ok:
        assert done.token_ids == server.tokenizer.encode("fine") + [EOT_ID]
        body = server.generation_requests()[-1].body
        assert ("return_tokens_as_token_ids" in body) == (ids_api == "logprobs")


def test_text_requests_keep_their_counts_and_get_ids_only_when_asked():
    with ScriptedServer(["abc def", "abc def"]) as server:

        async def go():
            async with ModelClient(config(server.url)) as client:
                plain = await client.complete("<|begin_of_text|>hi")
                asked = await client.complete("<|begin_of_text|>hi", SamplingParams(extra={"return_token_ids": True}))
                return plain, asked

        plain, asked = run(go())
    assert plain.token_ids is None and plain.completion_tokens == 3
    assert asked.token_ids == server.tokenizer.encode("abc def") + [EOT_ID]


def test_a_tiktoken_file_as_the_configured_tokenizer_counts_locally(tok):
    with ScriptedServer([]) as server:

        async def go(name):
            async with ModelClient(config(server.url, tokenizer=name)) as client:
                return await client.tokenize("Hello world <|eot_id|>"), await client.count_tokens("Hello world")

        for name in (str(tok.path), "cwm"):
            ids, count = run(go(name))
            assert ids == tok.encode("Hello world <|eot_id|>") and ids[:2] == [9906, 1917] and count == 2
    assert not [r for r in server.requests if r.endpoint == "/tokenize"]


def test_a_missing_tiktoken_file_is_a_model_error(tmp_path):
    with ScriptedServer([]) as server:

        async def go():
            async with ModelClient(config(server.url, tokenizer="cwm")) as client:
                return await client.tokenize("x")

        import cwm_agent.model.tokenizer as tokmod

        saved = tokmod.find_bpe_file
        tokmod.find_bpe_file = lambda path=None: (_ for _ in ()).throw(TokenizerNotFoundError("no file; run fetch"))
        try:
            with pytest.raises(ModelError, match="fetch"):
                run(go())
        finally:
            tokmod.find_bpe_file = saved
