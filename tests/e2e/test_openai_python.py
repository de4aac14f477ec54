"""The server through the official OpenAI Python SDK: shapes, streaming,
helpers, n>1, seeds, logprobs, errors, cancellation and concurrency."""
import asyncio
import time

import httpx
import openai
import pytest

from conftest import GEMMA, SMOL, kv_used

HELLO = [{"role": "user", "content": "Name a fruit."}]


def greedy_chat(client, model=SMOL, messages=HELLO, max_tokens=12, **kw):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, **kw)


def test_models_lists_every_loaded_model(client):
    ids = {m.id for m in client.models.list()}
    assert {SMOL, GEMMA} <= ids
    assert client.models.retrieve(SMOL).id == SMOL


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_chat_shape(client, model):
    r = greedy_chat(client, model=model)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.created > 0
    assert r.model == model
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant" and c.finish_reason in ("stop", "length")
    assert c.logprobs is None and isinstance(c.message.content, str)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 12


def test_stream_equals_non_stream(client):
    want = greedy_chat(client, max_tokens=16).choices[0].message.content
    chunks = list(client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=16, temperature=0, stream=True))
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and finals[0] is chunks[-1]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want


def test_stream_helper_gives_final_completion(client):
    # The SDK's helper raises on finish_reason "length": give it room to stop.
    with client.chat.completions.stream(model=SMOL, messages=HELLO, max_tokens=64, temperature=0) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].finish_reason == "stop"


def test_usage_chunk(client, http):
    chunks = list(client.chat.completions.create(
        model=SMOL, messages=HELLO, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    # On the wire: usage is an explicit null on every other chunk, and [DONE] ends it.
    body = http.post("/v1/chat/completions", json={
        "model": SMOL, "messages": HELLO, "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}}).text
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"usage":null' in events[0]


def test_n_choices_have_indexes(client):
    r = client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=6, temperature=1.0, seed=1, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    chunks = list(client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=4, n=2, stream=True))
    finals = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finals) == [0, 1]


def test_seed_determinism(client):
    kw = dict(model=SMOL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16, temperature=1.0, top_p=0.95)
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b


def test_logprobs_concatenate_to_text(client):
    r = greedy_chat(client, max_tokens=10, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)
    # Greedy: the chosen token is the most likely one.
    assert all(t.top_logprobs[0].token == t.token for t in lp)


def test_completions_prompt_forms(client):
    r = client.completions.create(model=SMOL, prompt="The sky is", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    many = client.completions.create(model=SMOL, prompt=["The sky is", "Grass is"], max_tokens=3, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == client.completions.create(model=SMOL, prompt="The sky is", max_tokens=3, temperature=0).choices[0].text
    ids = client.completions.create(model=SMOL, prompt=[504, 7935, 314], max_tokens=3, temperature=0)
    lists = client.completions.create(model=SMOL, prompt=[[504, 7935, 314], [504]], max_tokens=3, temperature=0)
    assert lists.choices[0].text == ids.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=SMOL, prompt="The sky is", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
    lp = client.completions.create(model=SMOL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    assert "".join(lp.choices[0].logprobs.tokens) == lp.choices[0].text


@pytest.mark.parametrize("kwargs,status,needle", [
    (dict(model="no-such-model"), 404, "no-such-model"),
    (dict(temperature=5), 400, "temperature"),
    (dict(max_tokens=100000), 400, "maximum context length is 8192"),
    (dict(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    (dict(stream_options={"include_usage": True}), 400, "stream_options"),
    (dict(messages=[]), 400, "messages"),
])
def test_errors_parse_in_the_sdk(client, kwargs, status, needle):
    args = dict(model=SMOL, messages=HELLO, max_tokens=4)
    args.update(kwargs)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == status
    assert needle in e.value.message
    body = e.value.body
    assert set(body) >= {"message", "type", "param", "code"}


def test_malformed_and_oversized_bodies(http):
    r = http.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = http.post("/v1/chat/completions", content=b"x" * (5 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-request-id"]
    r = http.get("/v1/models", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


def test_health_ready_metrics(http):
    assert http.get("/health").status_code == 200
    assert http.get("/ready").json()["status"] == "ready"
    m = http.get("/metrics").text
    for name in ["switchyard_requests_total", "vllm:time_to_first_token_seconds_bucket",
                 "switchyard_kv_blocks_free", "vllm:num_requests_waiting", "vllm:num_preemptions_total"]:
        assert name in m


def test_cancellation_frees_blocks(base_url, http):
    async def fire():
        async with httpx.AsyncClient(base_url=base_url, timeout=0.5) as c:
            async def one(i):
                try:
                    await c.post("/v1/chat/completions", json={
                        "model": SMOL, "max_tokens": 400, "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": f"Write a long essay about topic {i}."}]})
                except httpx.TimeoutException:
                    pass
            await asyncio.gather(*(one(i) for i in range(64)))
    asyncio.run(fire())
    t0 = time.time()
    r = http.post("/v1/chat/completions", json={"model": SMOL, "messages": HELLO, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and time.time() - t0 < 20
    deadline = time.time() + 10
    while kv_used(http, SMOL) != 0:
        assert time.time() < deadline, "KV blocks not back to idle after cancellation"
        time.sleep(0.1)
    assert 'status="cancelled"' in http.get("/metrics").text


def test_sixteen_concurrent_streams(aclient, client):
    prompts = [f"Count from {i} to {i + 5}." for i in range(16)]

    async def stream_one(p):
        text = ""
        s = await aclient.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0, stream=True)
        async for c in s:
            if c.choices:
                text += c.choices[0].delta.content or ""
        return text

    async def all_streams():
        return await asyncio.gather(*(stream_one(p) for p in prompts))

    got = asyncio.run(all_streams())
    for p, g in zip(prompts[:4], got[:4]):
        want = client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0).choices[0].message.content
        assert g == want
    assert len(set(got)) > 1
