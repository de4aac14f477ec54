"""Fixtures for the end-to-end tests: the server started by tests/e2e/run."""
import os
import re
import socket
import time

import httpx
import openai
import pytest

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"


@pytest.fixture(scope="session")
def base_url():
    url = os.environ.get("SWITCHYARD_URL")
    if not url:
        pytest.skip("SWITCHYARD_URL is not set: run tests/e2e/run, which starts the server")
    return url


@pytest.fixture(scope="session")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(base_url):
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(proc, url, log=None, timeout=120):
    """Wait until a started `switchyard serve` answers /ready with 200; fail
    (with its log, when given) if it exits or takes longer than `timeout`."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the server at {url} did not become ready"
                                 + (f":\n{log.read_text()}" if log else ""))
        time.sleep(0.05)


def kv_used(http, model):
    """KV blocks held by requests of one model, from /metrics."""
    m = http.get("/metrics").text
    return float(re.search(rf'switchyard_kv_blocks_used{{model="{model}"}} (\S+)', m).group(1))
