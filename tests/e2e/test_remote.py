"""Remote OpenAI-compatible models in the pool: a second switchyard (with its
own API key) as the upstream, and a stub that fails on demand. Streaming
passes through chunk by chunk, answers are renamed and audited, a failing
remote falls back to a local model and then cools down."""
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SMOL_FILE = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def start(binary, d, name, toml, env):
    (d / f"{name}.toml").write_text(toml)
    port = free_port()
    log = open(d / f"{name}.log", "w")
    proc = subprocess.Popen([binary, "serve", "--config", str(d / f"{name}.toml"), "--addr", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, d / f"{name}.log", timeout=60)
    return proc, url


class Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that fails with 500 while `fail` is set."""
    fail = True
    hits = 0

    def do_POST(self):
        Stub.hits += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if Stub.fail:
            body, code = {"error": {"message": "stub is down", "type": "server_error"}}, 500
        else:
            body, code = {"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "stub says hi"},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}, 200
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    binary = os.environ.get("SWITCHYARD_BIN")
    if not binary:
        pytest.skip("SWITCHYARD_BIN is not set: run tests/e2e/run")
    d = tmp_path_factory.mktemp("remote")
    upstream, up_url = start(binary, d, "upstream", f"""
[router]
audit_db = "up-audit.db"

[[models]]
id = "smollm2-135m-instruct"
source = "{SMOL_FILE}"
""", {"SWITCHYARD_API_KEY": "up-key"})
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    perf = 'performance = {{ prefill_tok_s = {}, decode_tok_s = {}, source = "test" }}'
    main, url = start(binary, d, "main", f"""
[router]
audit_db = "audit.db"

[[models]]
id = "b"
source = "{SMOL_FILE}"
[models.routing]
cost = {{ usd_per_hour = 0.05 }}
{perf.format(150.0, 50.0)}

[[models]]
id = "up"
backend = "openai"
base_url = "{up_url}/v1"
model = "smollm2-135m-instruct"
api_key_env = "UP_KEY"
context_window = 8192
[models.routing]
cost = {{ input_per_mtok = 0.1, output_per_mtok = 0.2 }}
{perf.format(150.0, 50.0)}

[[models]]
id = "flaky"
backend = "openai"
base_url = "http://127.0.0.1:{stub.server_address[1]}/v1"
context_window = 8192
allowed_fails = 2
cooldown_s = 3
[models.routing]
cost = {{ input_per_mtok = 0.1, output_per_mtok = 0.2 }}
{perf.format(10000.0, 1000.0)}
""", {"UP_KEY": "up-key", "SWITCHYARD_API_KEY": ""})
    yield url
    main.kill()
    upstream.kill()
    stub.shutdown()


def test_remote_through_the_sdk_streamed_and_not(servers):
    client = openai.OpenAI(base_url=servers + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = client.chat.completions.create(model="up", messages=QUESTION, max_tokens=12, temperature=0)
    assert r.model == "up" and r.choices[0].message.content
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="up", messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True))
    assert all(c.model == "up" for c in chunks)
    assert all(c.usage is None for c in chunks), "usage was not asked for"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    with_usage = list(client.chat.completions.create(
        model="up", messages=QUESTION, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].usage.completion_tokens == r.usage.completion_tokens
    # The upstream's refusal is the client's answer.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="up", messages=QUESTION, max_tokens=10**7)
    assert "refused" in e.value.message
    # Listed with the local models.
    assert {"b", "up", "flaky"} <= {m.id for m in client.models.list()}


def test_routed_to_remote_is_audited(servers):
    with httpx.Client(base_url=servers, timeout=120) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "auto", "messages": QUESTION, "max_tokens": 6, "routing": {"models": ["up"]}}).json()
        assert r["model"] == "up" and r["routing"]["served_model"] == "up"
        rec = c.get(f"/v1/routing/decisions/{r['routing']['decision_id']}").json()
        assert rec["outcome"]["served_model"] == "up"
        assert rec["outcome"]["completion_tokens"] == r["usage"]["completion_tokens"]
        assert rec["outcome"]["cost_usd"] > 0
        # Streamed: the routing summary rides on the last chunk.
        with c.stream("POST", "/v1/chat/completions", json={
                "model": "auto", "messages": QUESTION, "max_tokens": 6, "stream": True,
                "routing": {"models": ["up"]}}) as s:
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
        assert events[-1]["routing"]["served_model"] == "up"
        assert all("routing" not in e for e in events[:-1])
        assert "up" in c.get("/metrics").text


def test_failing_remote_falls_back_then_cools_down(servers):
    Stub.fail, Stub.hits = True, 0
    ask = {"model": "auto:latency", "messages": QUESTION, "max_tokens": 4, "routing": {"models": ["flaky", "b"]}}
    with httpx.Client(base_url=servers, timeout=120) as c:
        for _ in range(2):
            r = c.post("/v1/chat/completions", json=ask).json()
            assert r["model"] == "b", r
            fb = r["routing"]["fallbacks"]
            assert fb[0]["model"] == "flaky" and "500" in fb[0]["reason"], fb
        assert Stub.hits == 2
        # Two failures in a row: flaky cools down and is not even tried.
        r = c.post("/v1/chat/completions", json=ask).json()
        assert r["model"] == "b" and r["routing"]["fallbacks"] == []
        rec = c.get(f"/v1/routing/decisions/{r['routing']['decision_id']}").json()
        flaky = next(x for x in rec["decision"]["candidates"] if x["model"] == "flaky")
        assert flaky["excluded"] == "unhealthy", flaky
        assert Stub.hits == 2
        # After the cooldown it is tried again, and now it serves.
        Stub.fail = False
        time.sleep(3.2)
        r = c.post("/v1/chat/completions", json=ask).json()
        assert r["model"] == "flaky" and r["choices"][0]["message"]["content"] == "stub says hi", r
        # Pinned to a failing remote: a 502 naming it.
        Stub.fail = True
        r = c.post("/v1/chat/completions", json={"model": "flaky", "messages": QUESTION})
        assert r.status_code == 502 and "flaky" in r.json()["error"]["message"], r.text
