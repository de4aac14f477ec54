"""Fixtures for the end-to-end tests: the server started by tests/e2e/run."""
import os
import re
import socket

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


def kv_used(http, model):
    """KV blocks held by requests of one model, from /metrics."""
    m = http.get("/metrics").text
    return float(re.search(rf'switchyard_kv_blocks_used{{model="{model}"}} (\S+)', m).group(1))
