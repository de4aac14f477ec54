"""model="auto" through the official OpenAI SDK: routing summary, decision
header and records, streaming, scope/exclude, and fallback under fault
injection with the record surviving a kill -9 and restart."""
import os
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from conftest import GEMMA, SMOL, free_port, wait_ready

KNOWLEDGE = [{"role": "user", "content": "What is the capital of Australia?"}]
ROOT = Path(__file__).resolve().parents[2]


def test_models_lists_auto(client):
    assert "auto" in {m.id for m in client.models.list()}


def test_auto_through_the_sdk(client, http):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=KNOWLEDGE, max_tokens=6, temperature=0)
    decision_id = raw.headers["x-switchyard-decision-id"]
    r = raw.parse()
    assert r.model in (SMOL, GEMMA)
    routing = r.model_extra["routing"]
    assert routing["decision_id"] == decision_id and routing["served_model"] == r.model
    assert routing["task"] == "knowledge_qa" and routing["why"]
    rec = http.get(f"/v1/routing/decisions/{decision_id}").json()
    assert {c["model"] for c in rec["decision"]["candidates"]} == {SMOL, GEMMA}
    assert rec["outcome"]["served_model"] == r.model
    assert rec["outcome"]["completion_tokens"] == r.usage.completion_tokens
    assert rec["outcome"]["ttft_ms"] > 0 and rec["outcome"]["cost_usd"] >= 0
    assert rec["prompt"] is None and len(rec["request_hash"]) == 16
    listed = http.get("/v1/routing/decisions", params={"limit": 50, "model": r.model, "task": "knowledge_qa"}).json()
    assert decision_id in [d["id"] for d in listed["data"]]
    assert http.get("/v1/routing/decisions/dec-nope").status_code == 404


def test_auto_stream_carries_routing_in_the_final_chunk(client):
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=KNOWLEDGE, max_tokens=4, temperature=0, stream=True) as resp:
        decision_id = resp.headers["x-switchyard-decision-id"]
        chunks = list(resp.parse())
    assert chunks[-1].model_extra["routing"]["decision_id"] == decision_id
    assert all("routing" not in (c.model_extra or {}) for c in chunks[:-1])
    assert chunks[-1].choices[0].finish_reason is not None


@pytest.mark.parametrize("routing,want", [
    ({"models": [GEMMA]}, GEMMA),
    ({"models": [SMOL]}, SMOL),
    ({"exclude": [SMOL]}, GEMMA),
    ({"exclude": [GEMMA], "objective": "latency"}, SMOL),
])
def test_scope_and_exclude(client, routing, want):
    r = client.chat.completions.create(model="auto", messages=KNOWLEDGE, max_tokens=3, extra_body={"routing": routing})
    assert r.model == want and r.model_extra["routing"]["served_model"] == want


def test_pinned_model_with_routing_options_is_recorded_as_pinned(client, http):
    raw = client.chat.completions.with_raw_response.create(
        model=GEMMA, messages=KNOWLEDGE, max_tokens=3, extra_body={"routing": {"objective": "cost"}})
    r = raw.parse()
    assert r.model == GEMMA and r.model_extra["routing"]["pinned"] is True
    rec = http.get(f"/v1/routing/decisions/{raw.headers['x-switchyard-decision-id']}").json()
    assert rec["decision"]["pinned"] is True and rec["decision"]["candidates"] == []
    assert rec["outcome"]["served_model"] == GEMMA


def test_bad_routing_requests(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto:fastest", messages=KNOWLEDGE, max_tokens=3)
    assert "auto:fastest" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=KNOWLEDGE, max_tokens=3,
                                       extra_body={"routing": {"min_quality": 0.99}})
    assert "No model can serve" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="auto", prompt="hi", max_tokens=3)
    assert "chat/completions" in e.value.message


def _start(port, db, log, env_extra):
    env = dict(os.environ, **env_extra)
    p = subprocess.Popen([os.environ["SWITCHYARD_BIN"], "serve", "--config", str(ROOT / "models.toml"),
                          "--addr", f"127.0.0.1:{port}", "--audit-db", str(db)],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_ready(p, f"http://127.0.0.1:{port}")
    return p


def test_fallback_under_fault_injection_and_record_survives_kill9(tmp_path):
    if "SWITCHYARD_BIN" not in os.environ:
        pytest.skip("SWITCHYARD_BIN is not set: run tests/e2e/run")
    port, db = free_port(), tmp_path / "audit.db"
    with open(tmp_path / "server.log", "wb") as log:
        # SmolLM2 wins auto:quality on a knowledge prompt; make it fail.
        p = _start(port, db, log, {"SWITCHYARD_FAULT_MODELS": SMOL})
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
                "model": "auto:quality", "messages": KNOWLEDGE, "max_tokens": 4}).json()
            assert r["model"] == GEMMA
            routing = r["routing"]
            assert routing["fallbacks"][0]["model"] == SMOL and "injected fault" in routing["fallbacks"][0]["reason"]
            decision_id = routing["decision_id"]
            # Records are written off the request path: kill once this one
            # is committed (the queue is empty).
            deadline = time.time() + 10
            while "switchyard_audit_queue_depth 0" not in httpx.get(f"http://127.0.0.1:{port}/metrics").text:
                assert time.time() < deadline, "the audit queue never drained"
                time.sleep(0.05)
        finally:
            p.kill()  # SIGKILL: no clean shutdown
            p.wait()
        p = _start(port, db, log, {})
        try:
            rec = httpx.get(f"http://127.0.0.1:{port}/v1/routing/decisions/{decision_id}", timeout=10).json()
            assert rec["decision"]["order"][0] == SMOL
            assert rec["outcome"]["served_model"] == GEMMA
            assert rec["outcome"]["fallbacks"][0][0] == SMOL
        finally:
            p.terminate()
            p.wait()
