"""The serverless pool: a catalog larger than its memory budget, models that
load on first use (one load for many concurrent requests), least-recently-used
eviction that spares pinned and busy models, keep_alive, sleep and wake, a
corrupt file, and the admin API. The server is started here with its own
catalog: three copies of SmolLM2 (about 115 MB each with a 16 MiB KV pool)
under a 300 MB budget, so that any two fit and three do not."""
import concurrent.futures
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SMOL_FILE = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory):
    binary = os.environ.get("SWITCHYARD_BIN")
    if not binary:
        pytest.skip("SWITCHYARD_BIN is not set: run tests/e2e/run")
    d = tmp_path_factory.mktemp("pool")
    (d / "corrupt.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    models = [  # id, source, extra settings
        ("a", SMOL_FILE, "preload = false"),
        ("b", SMOL_FILE, "preload = true\npin = true"),
        ("c", SMOL_FILE, "preload = false"),
        ("brief", SMOL_FILE, "preload = false\nkeep_alive = 1"),
        ("broken", "corrupt.gguf", "preload = false"),
        ("broken-too", "corrupt.gguf", "preload = false"),
    ]
    catalog = """
[engine]
kv_cache_mb = 16
max_num_batched_tokens = 128

[pool]
memory_budget = "300MB"
load_timeout_s = 60

[router]
audit_db = "audit.db"
"""
    for model_id, source, extra in models:
        catalog += f"""
[[models]]
id = "{model_id}"
source = "{source}"
{extra}
[models.routing]
performance = {{ prefill_tok_s = 150.0, decode_tok_s = 50.0, source = "test" }}
"""
    (d / "models.toml").write_text(catalog)
    port = free_port()
    log = open(d / "server.log", "w")
    proc = subprocess.Popen([binary, "serve", "--config", str(d / "models.toml"), "--addr", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SWITCHYARD_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, d / "server.log", timeout=60)
    yield url, d
    proc.kill()


def states(c):
    return {m["id"]: m for m in c.get("/v1/models").json()["data"] if m["id"] != "auto"}


def metric(c, name, **labels):
    text = c.get("/metrics").text
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(sel)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def greedy(client, model, text="Name three colours.", n=16, **extra):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                       max_tokens=n, temperature=0, **extra)
    return r.choices[0].message.content


def test_pool_on_demand_lru_pin_and_busy(pool_server):
    url, _ = pool_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with httpx.Client(base_url=url, timeout=120) as c:
        s = states(c)
        # Only the preloaded, pinned model is resident; the rest wait for use.
        assert s["b"]["state"] == "ready" and s["b"]["pinned"]
        assert all(s[m]["state"] == "unloaded" and s[m]["memory_bytes"] == 0 for m in ["a", "c", "brief", "broken"])
        assert c.get("/v1/models").json()["memory"]["budget_bytes"] == 300_000_000

        # 16 concurrent first requests to an unloaded model: one load.
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            outs = list(ex.map(lambda _: greedy(client, "a", n=4), range(16)))
        assert len(set(outs)) == 1, outs
        assert metric(c, "switchyard_model_events_total", model="a", event="load_started") == 1
        assert metric(c, "switchyard_model_events_total", model="a", event="loaded") == 1
        s = states(c)
        assert s["a"]["state"] == "ready" and s["a"]["load_seconds"] > 0 and s["a"]["memory_bytes"] > 98_000_000

        # A third model does not fit: the least recently used idle one (a)
        # leaves, never the pinned b.
        greedy(client, "c", n=4)
        s = states(c)
        assert (s["a"]["state"], s["b"]["state"], s["c"]["state"]) == ("unloaded", "ready", "ready"), s
        assert metric(c, "switchyard_model_events_total", model="a", event="evicted") == 1
        assert metric(c, "switchyard_model_state", model="a", state="unloaded") == 1

        # c streams; b is pinned: nothing can make room for a, which is
        # refused with a message naming what holds the memory.
        stream = client.chat.completions.create(
            model="c", messages=[{"role": "user", "content": "Tell a long story."}],
            max_tokens=250, temperature=0, stream=True, extra_body={"ignore_eos": True})
        it = iter(stream)
        next(it)
        assert states(c)["c"]["in_flight"] == 1
        with pytest.raises(openai.APIStatusError) as e:
            greedy(client, "a", n=4)
        assert e.value.status_code == 503 and e.value.response.headers.get("retry-after")
        err = e.value.response.json()["error"]
        assert err["code"] == "insufficient_memory", err
        assert "`b`" in err["message"] and "pinned" in err["message"], err
        assert "`c`" in err["message"] and "in flight" in err["message"], err
        assert states(c)["c"]["state"] == "ready"
        pieces = [ch.choices[0].delta.content or "" for ch in it]
        assert len("".join(pieces)) > 0
        # The stream is over: now c is idle and can go.
        greedy(client, "a", n=4)
        s = states(c)
        assert (s["a"]["state"], s["c"]["state"]) == ("ready", "unloaded"), s


def test_corrupt_file_is_a_clear_error(pool_server):
    url, _ = pool_server
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "model_load_failed" and "broken" in err["message"], err
        assert "GGUF" in err["message"] or "gguf" in err["message"], err
        s = states(c)
        assert s["broken"]["state"] == "failed" and s["broken"]["error"]
        # Nothing else was disturbed, and the next request does not retry at once.
        assert s["b"]["state"] == "ready"
        assert c.post("/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]}).status_code == 503
        assert metric(c, "switchyard_model_events_total", model="broken", event="load_failed") == 1


def test_keep_alive_and_request_keep_alive(pool_server):
    url, _ = pool_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with httpx.Client(base_url=url, timeout=120) as c:
        greedy(client, "brief", n=2)
        assert states(c)["brief"]["state"] == "ready"
        deadline = time.time() + 10
        while states(c)["brief"]["state"] != "unloaded":
            assert time.time() < deadline, states(c)["brief"]
            time.sleep(0.2)
        assert states(c)["brief"]["memory_bytes"] == 0
        assert metric(c, "switchyard_model_events_total", model="brief", event="unloaded") >= 1
        assert metric(c, "switchyard_model_memory_bytes", model="brief") == 0
        # keep_alive 0 on the request: the model leaves right after it.
        greedy(client, "brief", n=2, extra_body={"keep_alive": 0})
        deadline = time.time() + 3
        while states(c)["brief"]["state"] != "unloaded":
            assert time.time() < deadline, states(c)["brief"]
            time.sleep(0.05)
        # A request's keep_alive is validated.
        r = c.post("/v1/chat/completions", json={"model": "b", "keep_alive": "soon",
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive", r.text


def test_sleep_and_wake_serve_the_same_tokens(pool_server):
    url, _ = pool_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with httpx.Client(base_url=url, timeout=120) as c:
        before = greedy(client, "b", text="Count from one to ten.", n=24)
        r = c.post("/admin/models/b/sleep")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "sleeping"
        # Weights stay; the KV pool is gone.
        assert 98_000_000 <= r.json()["memory_bytes"] < 110_000_000, r.json()
        after = greedy(client, "b", text="Count from one to ten.", n=24)
        assert after == before
        assert metric(c, "switchyard_model_events_total", model="b", event="woke") == 1
        st = states(c)["b"]
        assert st["state"] == "ready" and st["load_seconds"] is not None
        # Admin unload and load; unknown actions and models are clean errors.
        assert c.post("/admin/models/b/unload").json()["state"] == "unloaded"
        assert c.post("/admin/models/b/load").json()["state"] == "ready"
        assert c.post("/admin/models/b/explode").status_code == 404
        assert c.post("/admin/models/nope/load").status_code == 404


def test_auto_routes_to_cold_models_and_falls_back_from_a_failed_load(pool_server):
    url, _ = pool_server
    with httpx.Client(base_url=url, timeout=120) as c:
        c.post("/admin/models/c/unload")
        # Two cold candidates; the corrupt one is tiny, so it is predicted
        # to load fastest and wins on latency, fails, and c serves.
        r = c.post("/v1/chat/completions", json={
            "model": "auto:latency", "max_tokens": 4,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "routing": {"models": ["broken-too", "c"]}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "c"
        fb = body["routing"]["fallbacks"]
        assert fb[0]["model"] == "broken-too" and "failed to load" in fb[0]["reason"], fb
        rec = c.get(f"/v1/routing/decisions/{body['routing']['decision_id']}").json()
        cands = {x["model"]: x for x in rec["decision"]["candidates"]}
        assert cands["c"]["cold_start"]["predicted_ms"] > 0, cands["c"]
        assert "MB/s" in cands["c"]["cold_start"]["basis"], cands["c"]
        assert rec["decision"]["order"][0] == "broken-too"
        assert rec["outcome"]["served_model"] == "c"
        # The failed model is now unhealthy for routing; c is warm and wins
        # with no cold start, and the next cold prediction for a copy of c's
        # file uses the load rate measured just now.
        r = c.post("/v1/chat/completions", json={
            "model": "auto:latency", "max_tokens": 4,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "routing": {"models": ["broken-too", "c", "a"]}}).json()
        rec = c.get(f"/v1/routing/decisions/{r['routing']['decision_id']}").json()
        cands = {x["model"]: x for x in rec["decision"]["candidates"]}
        assert cands["broken-too"]["excluded"] == "unhealthy", cands["broken-too"]
        assert "cold_start" not in cands["c"]
        if states(c)["a"]["state"] != "ready":
            assert "measured" in cands["a"]["cold_start"]["basis"] or "last load" in cands["a"]["cold_start"]["basis"]
