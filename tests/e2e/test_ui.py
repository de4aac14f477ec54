"""The decisions page (`GET /ui`) in a real headless browser: Debian's
Chromium runs the page's script against the live server, and the DOM it
leaves is checked for a decision made during the test, its detail view,
the models' live load and the latest routing preview."""
import html
import re
import shutil
import subprocess

import pytest

from conftest import SMOL


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium here: tests/e2e/run installs Debian's `chromium` where it may")


def rendered(url):
    """The DOM after the page's script ran (its fetches included)."""
    p = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--virtual-time-budget=10000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def text(markup):
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", markup)))


def test_page_is_static_and_names_no_external_resource(http):
    r = http.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert not re.search(r"""(src|href)=["']https?:""", r.text)


def test_page_renders_a_decision_and_its_detail(client, http, base_url):
    r = client.chat.completions.create(model="auto", max_tokens=4, messages=[
        {"role": "user", "content": "Translate 'thank you very much' into German."}])
    decision = r.model_extra["routing"]["decision_id"]
    served = r.model_extra["routing"]["served_model"]
    http.post("/v1/routing/preview", json={"baseline": SMOL, "requests": [
        {"messages": [{"role": "user", "content": "What is 12 squared?"}]}]}).raise_for_status()

    dom = rendered(base_url + "/ui")
    row = re.search(rf'<tr data-id="{re.escape(decision)}">(.*?)</tr>', dom, re.S)
    assert row, "the new decision is listed"
    assert served in text(row.group(1)) and "served" in text(row.group(1))
    models = re.search(r'<table id="models">(.*?)</table>', dom, re.S).group(1)
    assert SMOL in text(models) and "ready" in text(models)
    preview = re.search(r'<div id="preview">(.*?)</div>', dom, re.S).group(1)
    assert f"against {SMOL}" in text(preview)

    detail_dom = rendered(f"{base_url}/ui#decision={decision}")
    detail = re.search(r'<div id="detail">(.*?)</div>', detail_dom, re.S)
    assert detail, "the detail view opens from the URL"
    body = text(detail.group(1))
    why = http.get(f"/v1/routing/decisions/{decision}").json()["decision"]["why"]
    assert f"Decision {decision}" in body and text(why).strip() in body
    candidates = re.search(r'<table id="detail-candidates">(.*?)</table>', detail.group(1), re.S).group(1)
    assert candidates.count("<tr>") >= 3  # header + both default models
    assert "binding constraint" in body and "predicted cost" in text(candidates)


def test_page_shows_a_cascade_and_its_escalation(http, base_url):
    r = http.post("/v1/chat/completions", json={
        "model": "auto", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a Python function that returns the reverse of a string."}],
        "routing": {"cascade": True, "min_confidence": 0.0}}).json()
    decision = r["routing"]["decision_id"]
    escalated = r["routing"]["attempts"][0]["model"]
    detail_dom = rendered(f"{base_url}/ui#decision={decision}")
    body = text(re.search(r'<div id="detail">(.*?)</div>', detail_dom, re.S).group(1))
    assert f"{escalated}: escalated" in body and "threshold 0.000" in body, body
