"""Routing preview: `switchyard preview` (table, JSON, HTML; from a file or
the audit store) and `POST /v1/routing/preview`, over the default catalog."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import GEMMA, SMOL

ROOT = Path(__file__).resolve().parents[2]
TASKS = {"code", "math", "reasoning", "knowledge_qa", "extraction", "classification", "summarization",
         "creative_writing", "chat", "translation", "tool_use", "analysis"}

# The shapes users have: a chat body (naming any model), an OpenAI Batch API
# line, a chat-log line with its response beside it.
REQUESTS = [
    {"model": "auto", "messages": [{"role": "user", "content": "What is 17 * 23? Show the steps."}]},
    {"model": "gpt-4o", "max_tokens": 40, "messages": [{"role": "user", "content": "Write a haiku about rain."}]},
    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Translate 'good morning' into French."}]}},
    {"messages": [{"role": "user", "content": "Hi there, how are you today?"}],
     "response": {"choices": [{"message": {"role": "assistant", "content": "Fine."}}]}, "usage": {"total_tokens": 12}},
]


def switchyard(*args):
    if "SWITCHYARD_BIN" not in os.environ:
        pytest.skip("SWITCHYARD_BIN is not set: run tests/e2e/run")
    return subprocess.run([os.environ["SWITCHYARD_BIN"], *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def check_report(report, n, baseline):
    assert report["baseline"] == baseline
    assert report["overall"]["requests"] == n and len(report["rows"]) == n
    assert set(report["by_task"]) <= TASKS
    assert sum(s["requests"] for s in report["by_task"].values()) == n
    for s in [report["overall"], *report["by_task"].values()]:
        assert 0.0 <= s["routed_unknown_share"] <= 1.0
        # A known mean exactly when some request's quality is known.
        known = s["routed_unknown_share"] < 1.0
        assert (s["routed_quality"] is not None) == known
    # Every objective at every floor; the frontier is not empty.
    assert len(report["frontier"]) == 24
    assert any(p["pareto"] for p in report["frontier"])


def test_cli_preview_json_table_and_html(tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in REQUESTS) + "\nnot json\n")
    html = tmp_path / "report.html"
    p = switchyard("preview", "--config", ROOT / "models.toml", "--input", requests, "--baseline", GEMMA,
                   "--format", "json", "--html", html)
    assert p.returncode == 0, p.stderr
    check_report(json.loads(p.stdout), len(REQUESTS), GEMMA)
    assert f"{requests}:5: skipped" in p.stderr
    page = html.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 4
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    table = switchyard("preview", "--config", ROOT / "models.toml", "--input", requests, "--baseline", SMOL,
                       "--objective", "cost", "--strong-share", "0.3")
    assert table.returncode == 0, table.stderr
    assert "overall" in table.stdout and "Frontier" in table.stdout and "objective cost" in table.stdout
    assert "Calibration:" in table.stdout


def test_cli_preview_execute_measures_a_sample(tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps({**r, "max_tokens": 8}) if "messages" in r else json.dumps(r)
                                  for r in REQUESTS) + "\n")
    p = switchyard("preview", "--config", ROOT / "models.toml", "--input", requests, "--baseline", GEMMA,
                   "--format", "json", "--execute", "2")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    measured = [r for r in rows if r["measured"]]
    assert len(measured) == 2 and all(r["routed_ms"] > 0 and r["baseline_ms"] > 0 for r in measured)
    assert all(not r["measured"] for r in rows[2:])
    p = switchyard("preview", "--config", ROOT / "models.toml", "--from-audit", "--baseline", GEMMA, "--execute", "1")
    assert p.returncode != 0 and "--input" in p.stderr


def test_cli_preview_refuses_what_it_cannot_do(tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(REQUESTS[0]) + "\n")
    p = switchyard("preview", "--config", ROOT / "models.toml", "--input", requests, "--baseline", "gpt-9")
    assert p.returncode != 0 and "gpt-9" in p.stderr and "not in the catalog" in p.stderr
    p = switchyard("preview", "--config", ROOT / "models.toml", "--input", requests, "--baseline", SMOL,
                   "--objective", "cheapest")
    assert p.returncode != 0 and "cheapest" in p.stderr
    # A cascade's escalations depend on its answers: measured, not projected.
    p = switchyard("preview", "--config", ROOT / "models.toml", "--input", requests, "--baseline", SMOL,
                   "--objective", "cascade")
    assert p.returncode != 0 and "eval --compare" in p.stderr


def test_cli_preview_from_the_audit_store(client):
    client.chat.completions.create(model="auto", max_tokens=4,
                                   messages=[{"role": "user", "content": "Name a prime number."}])
    p = switchyard("preview", "--config", ROOT / "models.toml", "--from-audit", "--since", "1d", "--baseline", SMOL,
                   "--format", "json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["overall"]["requests"] >= 1
    # The served token counts became the projection's lengths.
    assert all(r["baseline_cost_usd"] >= 0 for r in report["rows"])


def test_api_preview(http):
    r = http.post("/v1/routing/preview",
                  json={"requests": [*REQUESTS, {"messages": "not a list"}], "baseline": SMOL, "objective": "cost",
                        "strong_share": 0.25})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "routing.preview" and body["objective"] == "cost"
    check_report(body, len(REQUESTS), SMOL)
    assert [e["index"] for e in body["errors"]] == [len(REQUESTS)]
    c = body["calibration"]
    assert c["strong_share"] == 0.25 and 0.0 <= c["achieved"] <= 1.0
    assert c["min_quality"] is None or (c["achieved"] >= 0.25 and 0.0 <= c["min_quality"] <= 1.0)


@pytest.mark.parametrize("body, param", [
    ({"requests": [], "baseline": SMOL}, "requests"),
    ({"requests": REQUESTS, "baseline": "gpt-9"}, "baseline"),
    ({"requests": REQUESTS, "baseline": SMOL, "objective": "cheapest"}, "objective"),
    ({"requests": REQUESTS, "baseline": SMOL, "objective": "cascade"}, "objective"),
    ({"requests": [{"messages": 3}], "baseline": SMOL}, "requests"),
    ({"requests": REQUESTS, "baseline": SMOL, "strong_share": 1.5}, "strong_share"),
])
def test_api_preview_names_the_bad_field(http, body, param):
    r = http.post("/v1/routing/preview", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_api_preview_refuses_unknown_fields(http):
    r = http.post("/v1/routing/preview", json={"requests": REQUESTS, "baseline": SMOL, "tempreature": 1})
    assert r.status_code == 400 and "tempreature" in r.json()["error"]["message"]
