"""A fleet on one machine: a real PostgreSQL (Debian's, started here in a
temporary directory) shared by two `switchyard serve` replicas. Requests go
to both; each replica reads every replica's decisions; a replica killed with
SIGKILL loses no committed record; no record is dropped."""
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import SMOL, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
KNOWLEDGE = [{"role": "user", "content": "What is the capital of Canada?"}]
# Neither default model has code evidence: both stand in a cascade's chain.
CODE = [{"role": "user", "content": "Write a Python function that returns the reverse of a string."}]


def _pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        pytest.skip("no PostgreSQL here: tests/e2e/run installs Debian's postgresql where it may")
    return dirs[-1]


@pytest.fixture(scope="module")
def postgres():
    bin_dir = _pg_bin()
    tmp = tempfile.mkdtemp(prefix="switchyard-pg-")
    # initdb refuses root: run the server as the package's own user then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(tmp, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True, text=True)
    run(f"{bin_dir}/initdb", "-D", f"{tmp}/data", "-U", "switchyard", "--auth=trust", "-E", "UTF8")
    run(f"{bin_dir}/pg_ctl", "-D", f"{tmp}/data", "-l", f"{tmp}/log", "-w", "start",
        "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=on")
    try:
        run(f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "switchyard", "switchyard")
        yield f"postgres://switchyard@127.0.0.1:{port}/switchyard"
    finally:
        subprocess.run(as_user + [f"{bin_dir}/pg_ctl", "-D", f"{tmp}/data", "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _replica(url, log):
    port = free_port()
    env = dict(os.environ, SWITCHYARD_AUDIT_DB=url)
    p = subprocess.Popen([os.environ["SWITCHYARD_BIN"], "serve", "--config", str(ROOT / "models.toml"),
                          "--addr", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_ready(p, base)
    return p, base


def _gauge(base, name):
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} missing")


def _routed(base, n):
    ids = []
    for i in range(n):
        r = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": "auto", "messages": KNOWLEDGE, "max_tokens": 3 + i}).json()
        ids.append(r["routing"]["decision_id"])
    return ids


def test_two_replicas_share_one_audit_store_and_survive_kill9(postgres, tmp_path):
    if "SWITCHYARD_BIN" not in os.environ:
        pytest.skip("SWITCHYARD_BIN is not set: run tests/e2e/run")
    with open(tmp_path / "a.log", "wb") as log_a, open(tmp_path / "b.log", "wb") as log_b:
        a, url_a = _replica(postgres, log_a)
        b, url_b = _replica(postgres, log_b)
        try:
            ids_a, ids_b = _routed(url_a, 3), _routed(url_b, 3)
            # Either replica reads both replicas' decisions, with outcomes.
            for reader in (url_a, url_b):
                for i in ids_a + ids_b:
                    rec = httpx.get(f"{reader}/v1/routing/decisions/{i}", timeout=10).json()
                    assert rec["id"] == i and rec["outcome"]["served_model"], rec
                listed = httpx.get(f"{reader}/v1/routing/decisions", params={"limit": 100}).json()["data"]
                assert set(ids_a + ids_b) <= {d["id"] for d in listed}
            # The listing's filters run in PostgreSQL (SQL over the records' JSON):
            # a pinned request on A, a cascade that escalates on B, and the routed
            # ones above, each found by its own filter and by no other.
            pinned = httpx.post(url_a + "/v1/chat/completions", timeout=60, json={
                "model": SMOL, "messages": KNOWLEDGE, "max_tokens": 2, "routing": {"objective": "cost"}})
            pinned_id = pinned.headers["x-switchyard-decision-id"]
            escalated_id = httpx.post(url_b + "/v1/chat/completions", timeout=60, json={
                "model": "auto", "messages": CODE, "max_tokens": 4, "temperature": 0,
                "routing": {"cascade": True, "min_confidence": 0.0}}).json()["routing"]["decision_id"]
            objective = httpx.get(f"{url_a}/v1/routing/decisions/{ids_a[0]}").json()["decision"]["objective"]
            routed = set(ids_a + ids_b)
            everything = routed | {pinned_id, escalated_id}
            for params, want in [({"outcome": "served", "objective": objective}, routed),
                                 ({"pinned": "true"}, {pinned_id}),
                                 ({"escalated": "true", "objective": "cascade"}, {escalated_id}),
                                 ({"outcome": "served"}, everything), ({"outcome": "open"}, set()),
                                 ({"outcome": "error"}, set()), ({"fallback": "true"}, set())]:
                r = httpx.get(f"{url_b}/v1/routing/decisions", params={"limit": 100, **params})
                assert r.status_code == 200, r.text
                assert everything & {d["id"] for d in r.json()["data"]} == want, params
            # A's records are committed (its queue is empty): SIGKILL loses none.
            deadline = time.time() + 10
            while _gauge(url_a, "switchyard_audit_queue_depth") != 0:
                assert time.time() < deadline
                time.sleep(0.05)
            assert _gauge(url_a, "switchyard_audit_records_dropped_total") == 0
            a.kill()
            a.wait()
            for i in ids_a:
                rec = httpx.get(f"{url_b}/v1/routing/decisions/{i}", timeout=10).json()
                assert rec["outcome"]["completion_tokens"] > 0, rec
            # B goes on recording after its peer died.
            (more,) = _routed(url_b, 1)
            assert httpx.get(f"{url_b}/v1/routing/decisions/{more}").status_code == 200
            assert _gauge(url_b, "switchyard_audit_records_dropped_total") == 0
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.terminate()
                    p.wait()


def test_an_unreachable_store_is_a_clear_start_up_error(tmp_path):
    if "SWITCHYARD_BIN" not in os.environ:
        pytest.skip("SWITCHYARD_BIN is not set: run tests/e2e/run")
    env = dict(os.environ, SWITCHYARD_AUDIT_DB=f"postgres://sy:hunter2@127.0.0.1:{free_port()}/nowhere")
    p = subprocess.run([os.environ["SWITCHYARD_BIN"], "serve", "--config", str(ROOT / "models.toml"),
                        "--addr", f"127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "postgres://sy:***@127.0.0.1" in p.stderr and "hunter2" not in p.stderr, p.stderr[-2000:]
