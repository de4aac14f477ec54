"""/metrics in Prometheus' text format with vLLM's names and labels (what
Grafana dashboards, KEDA/HPA on queue depth and the Gateway API Inference
Extension's endpoint picker read), beside switchyard's own: parsed with the
official Python client's parser, and checked against requests made here."""
from prometheus_client.parser import text_string_to_metric_families

from conftest import SMOL

VLLM = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
}


def scrape(http):
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    return families


def value(families, family, sample, **labels):
    f = families.get(family)
    if f is None:
        return 0.0
    return sum(s.value for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_the_page_parses_and_carries_vllm_names_with_model_name(http):
    # One streamed request, so that every histogram has a sample.
    with http.stream("POST", "/v1/chat/completions", json={
            "model": SMOL, "max_tokens": 6, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to ten."}]}) as r:
        assert r.status_code == 200
        list(r.iter_lines())
    families = scrape(http)
    for name, kind in VLLM.items():
        assert name in families, f"{name} is missing"
        assert families[name].type == kind, (name, families[name].type)
        samples = families[name].samples
        assert samples and all(s.labels.get("model_name") for s in samples), name
    usage = value(families, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc", model_name=SMOL)
    assert 0.0 <= usage <= 1.0
    assert "switchyard_audit_records_dropped" in families and "switchyard_audit_queue_depth" in families
    assert value(families, "switchyard_audit_records_dropped", "switchyard_audit_records_dropped_total") == 0


def test_a_request_moves_the_counters_it_should(http):
    before = scrape(http)
    r = http.post("/v1/chat/completions", json={
        "model": SMOL, "max_tokens": 5, "ignore_eos": True, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]}).json()
    after = scrape(http)

    def delta(family, sample, **labels):
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert delta("vllm:generation_tokens", "vllm:generation_tokens_total", model_name=SMOL) == r["usage"]["completion_tokens"] == 5
    assert delta("vllm:prompt_tokens", "vllm:prompt_tokens_total", model_name=SMOL) == r["usage"]["prompt_tokens"]
    assert delta("vllm:request_success", "vllm:request_success_total", model_name=SMOL, finished_reason="length") == 1
    assert delta("vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count", model_name=SMOL) == 1
    assert delta("vllm:request_queue_time_seconds", "vllm:request_queue_time_seconds_count", model_name=SMOL) == 1
    assert delta("switchyard_requests", "switchyard_requests_total", model=SMOL, status="200") == 1


def test_routing_is_counted_by_task_objective_and_model(http):
    before = scrape(http)
    r = http.post("/v1/chat/completions", json={
        "model": "auto:cost", "max_tokens": 3,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}).json()
    after = scrape(http)
    labels = {"task": r["routing"]["task"], "objective": "cost", "model": r["routing"]["served_model"]}
    name = "switchyard_routing_decisions"
    assert value(after, name, name + "_total", **labels) - value(before, name, name + "_total", **labels) == 1
    assert value(after, "switchyard_classifier_seconds", "switchyard_classifier_seconds_count") > \
        value(before, "switchyard_classifier_seconds", "switchyard_classifier_seconds_count")


def test_json_logs_parse_line_by_line_and_carry_the_request_id(http):
    import json
    import os
    import time
    log = os.environ.get("SWITCHYARD_LOG")
    if not log:
        import pytest
        pytest.skip("SWITCHYARD_LOG is not set: tests/e2e/run starts the server with --log-format json")
    secret = "The secret word is periwinkle."
    with http.stream("POST", "/v1/chat/completions", headers={"x-request-id": "access-log-test-1"}, json={
            "model": "auto", "max_tokens": 4, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": secret}]}) as r:
        assert r.status_code == 200
        list(r.iter_lines())
    deadline = time.time() + 5
    while True:
        with open(log) as f:
            lines = [json.loads(line) for line in f if line.strip()]  # every line is JSON
        access = [l for l in lines if l.get("target") == "switchyard::access"
                  and l.get("request_id") == "access-log-test-1"]
        if access or time.time() > deadline:
            break
        time.sleep(0.1)
    assert len(access) == 1, "one access line per request"
    a = access[0]
    assert a["status"] == 200 and a["model"] == "auto" and a["path"] == "/v1/chat/completions"
    assert a["served_model"] in (SMOL, "gemma-3-270m") and a["decision_id"].startswith("dec-")
    assert a["completion_tokens"] == 4 and a["ttft_ms"] > 0 and a["total_ms"] >= a["ttft_ms"]
    assert all("periwinkle" not in json.dumps(l) for l in lines), "prompt text is never logged"
