"""Confidence cascades (`routing.cascade` / `auto:cascade`) on the default
models: the cheapest model answers first, its answer is judged on its own
token log-probabilities, a low one escalates before any byte reaches the
client, and the record shows every attempt with its confidence, threshold
and cost."""
import json

import pytest

from conftest import GEMMA, SMOL

# A code prompt: neither default model has code evidence, so both are in
# the chain (neither is known to be worse than the other).
CODE = [{"role": "user", "content": "Write a Python function that returns the reverse of a string."}]


def cascade(http, **routing):
    body = {"model": "auto", "messages": CODE, "max_tokens": 8, "temperature": 0,
            "routing": {"cascade": True, **routing}}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def record(http, response):
    return http.get(f"/v1/routing/decisions/{response['routing']['decision_id']}").json()


def test_a_low_confidence_answer_escalates_before_the_client_sees_it(http):
    # No answer's mean log-probability reaches 0 unless every token was
    # certain: the first model's answer is escalated.
    r = cascade(http, min_confidence=0.0)
    rec = record(http, r)
    decision = rec["decision"]
    assert decision["objective"] == "cascade"
    assert decision["order"] == sorted(decision["order"], key=lambda m: next(
        c["predicted_cost_usd"] for c in decision["candidates"] if c["model"] == m))
    assert set(decision["order"]) == {SMOL, GEMMA}, decision["why"]
    first, second = decision["order"]
    attempts = rec["outcome"]["attempts"]
    assert [a["model"] for a in attempts] == [first, second]
    judged = attempts[0]
    assert judged["mean_logprob"] < 0 and judged["min_logprob"] <= judged["mean_logprob"]
    assert judged["mean_entropy"] >= 0 and judged["tokens"] > 0
    assert judged["threshold"] == 0.0 and judged["threshold_source"] == "routing.min_confidence"
    assert not judged["accepted"] and "escalated" in judged["why"]
    assert judged["cost_usd"] > 0
    assert attempts[1]["accepted"] and "last model" in attempts[1]["why"]
    # The client sees the second model's answer only, and what it cost in all.
    assert r["model"] == second and r["routing"]["served_model"] == second
    assert [a["model"] for a in r["routing"]["attempts"]] == [first, second]
    assert rec["outcome"]["served_model"] == second
    assert rec["outcome"]["cost_usd"] > judged["cost_usd"]
    # Log-probabilities were read internally, not added to the answer.
    assert r["choices"][0]["logprobs"] is None


def test_a_confident_answer_is_served_by_the_cheapest(http):
    r = cascade(http, min_confidence=-1000.0)
    rec = record(http, r)
    first = rec["decision"]["order"][0]
    attempts = rec["outcome"]["attempts"]
    assert len(attempts) == 1 and attempts[0]["accepted"] and attempts[0]["model"] == first
    assert "≥ threshold" in attempts[0]["why"]
    assert r["model"] == first


def test_the_client_still_gets_logprobs_it_asked_for(http):
    body = {"model": "auto:cascade", "messages": CODE, "max_tokens": 4, "temperature": 0,
            "logprobs": True, "top_logprobs": 2, "routing": {"min_confidence": -1000.0}}
    r = http.post("/v1/chat/completions", json=body).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 2 for t in content)


def test_a_stream_is_judged_on_its_held_back_tokens(http):
    body = {"model": "auto", "messages": CODE, "max_tokens": 24, "temperature": 0, "stream": True,
            "routing": {"cascade": True, "min_confidence": 0.0}}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        chunks = [json.loads(line[6:]) for line in resp.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    routing = chunks[-1]["routing"]
    first, second = [a["model"] for a in routing["attempts"]]
    # The escalated model's tokens never reached the client.
    assert {c["model"] for c in chunks} == {second}
    # A stream is judged on at most the buffer (16 tokens by default).
    assert 0 < routing["attempts"][0]["tokens"] <= 16
    assert not routing["attempts"][0]["accepted"]


@pytest.mark.parametrize("body,param", [
    ({"model": SMOL, "routing": {"cascade": True}}, "routing.cascade"),
    ({"model": "auto:cost", "routing": {"cascade": True}}, "routing.cascade"),
    ({"model": "auto", "routing": {"cascade": True, "objective": "quality"}}, "routing.cascade"),
    ({"model": "auto", "routing": {"cascade": True, "min_confidence": 0.5}}, "routing.min_confidence"),
    ({"model": "auto", "routing": {"min_confidence": -0.5}}, "routing.min_confidence"),
    ({"model": "auto:quality", "routing": {"min_confidence": -0.5}}, "routing.min_confidence"),
])
def test_cascade_fields_are_honoured_or_refused_by_name(http, body, param):
    r = http.post("/v1/chat/completions", json={"messages": CODE, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_decision_listing_filters_escalations_in_the_store(http):
    escalated = cascade(http, min_confidence=0.0)["routing"]["decision_id"]
    accepted = cascade(http, min_confidence=-1000.0)["routing"]["decision_id"]

    def listed(**params):
        r = http.get("/v1/routing/decisions", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return {d["id"] for d in r.json()["data"]}

    found = listed(escalated="true", objective="cascade", outcome="served")
    assert escalated in found and accepted not in found
    assert {escalated, accepted} <= listed(objective="cascade")
    assert not {escalated, accepted} & (listed(objective="cost") | listed(pinned="true") | listed(outcome="open"))
    # A bad filter is named, never ignored.
    for params, param in [({"objective": "cheapest"}, "objective"), ({"outcome": "lost"}, "outcome"),
                          ({"task": "cooking"}, "task")]:
        r = http.get("/v1/routing/decisions", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = http.get("/v1/routing/decisions", params={"modle": "x"})
    assert r.status_code == 400 and "modle" in r.json()["error"]["message"], r.text
