#!/usr/bin/env python3
"""End-to-end serving: switchyard vs llama-server (same llama.cpp build as
the CPU benchmark, from the llama-cpp-python sdist), same GGUF, same load.

    .venv-e2e/bin/python benches/serve_vs_llama_server.py [--model smollm2-135m-instruct]
        [--concurrency 1,8,32] [--requests 32] [--rounds 3] [--slots 8]

The load at each concurrency: `--requests` streaming chat requests with the
same ~80-word prompt, 64 output tokens each (`ignore_eos`, greedy), at most
that many in flight. Each round starts one server, runs every concurrency,
stops it, then the other (A B A B ...). Reports medians over rounds of output
tokens/s, time to first token p50/p99 and inter-token latency p50/p99.
Needs httpx (the e2e virtualenv has it: tests/e2e/run creates .venv-e2e).
"""
import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
}
PROMPT = ("Write a short report about the history of railway switching yards, covering how freight cars "
          "were sorted by gravity humps, how signals and points were worked by hand and then by relay "
          "interlocking, what changed when computers began to plan the order of cars, and why yards "
          "still matter for moving goods across a continent today. Keep it factual and plain.")


def sh(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(url, path, proc):
    for _ in range(1200):
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


async def one(client, url, model, out_tokens):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": out_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    start = time.perf_counter()
    stamps = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                stamps.append(time.perf_counter())
    ttft = stamps[0] - start if stamps else float("nan")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return ttft, gaps, len(stamps)


async def load(url, model, concurrency, requests, out_tokens):
    sem = asyncio.Semaphore(concurrency)
    # A fresh connection per request: llama-server closes a streamed
    # response's connection, which a pooled client would try to reuse.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def guarded():
            async with sem:
                return await one(client, url, model, out_tokens)
        start = time.perf_counter()
        results = await asyncio.gather(*(guarded() for _ in range(requests)))
        wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    gaps = sorted(g for r in results for g in r[1])
    tokens = sum(r[2] for r in results)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    return {"tok_s": tokens / wall, "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
            "itl_p50": pct(gaps, 0.5), "itl_p99": pct(gaps, 0.99)}


def start_switchyard(model, file, threads, tmp):
    port = free_port()
    (tmp / "models.toml").write_text(f"""
[engine]
max_num_seqs = 64
max_num_batched_tokens = 512

[router]
audit_db = "audit.db"

[[models]]
id = "{model}"
source = "{ROOT / 'models' / file}"
""")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), RUST_LOG="warn", SWITCHYARD_API_KEY="")
    log = open(tmp / "switchyard.log", "ab")
    proc = subprocess.Popen([str(ROOT / "target/release/switchyard"), "serve", "--config", str(tmp / "models.toml"),
                             "--addr", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/ready", proc)
    return proc, url


def start_llama_server(bin_dir, file, threads, slots):
    port = free_port()
    proc = subprocess.Popen([str(bin_dir / "llama-server"), "-m", str(ROOT / "models" / file), "--port", str(port),
                             "-t", str(threads), "-np", str(slots), "-c", str(slots * 1024)],
                            stdout=subprocess.DEVNULL, stderr=open(Path(tempfile.gettempdir()) / "llama-server.log", "ab"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/health", proc)
    return proc, url


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(FILES))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8, help="llama-server's parallel slots (-np)")
    ap.add_argument("--out-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    sh([str(ROOT / "scripts/fetch-models")])
    bin_dir = Path(sh([str(ROOT / "scripts/build-llama-cpp")]).strip())
    sh(["cargo", "build", "--release", "-q", "-p", "switchyard-server"])
    file = FILES[args.model]
    levels = [int(c) for c in args.concurrency.split(",")]
    runs = {}
    tmp = Path(tempfile.mkdtemp())
    for rnd in range(args.rounds):
        for engine in ["switchyard", "llama-server"]:
            if engine == "switchyard":
                proc, url = start_switchyard(args.model, file, args.threads, tmp)
            else:
                proc, url = start_llama_server(bin_dir, file, args.threads, args.slots)
            try:
                asyncio.run(load(url, args.model, 1, 1, 4))  # warm-up
                for c in levels:
                    print(f"  {engine} at {c}", flush=True)
                    r = asyncio.run(load(url, args.model, c, args.requests, args.out_tokens))
                    runs.setdefault((engine, c), []).append(r)
            finally:
                proc.terminate()
                proc.wait()
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    med = lambda e, c, k: statistics.median(r[k] for r in runs[(e, c)])
    print(f"\nmodel={args.model} requests={args.requests} out_tokens={args.out_tokens} threads={args.threads} "
          f"llama-server slots={args.slots} rounds={args.rounds} (medians)\n")
    print("| concurrency | tok/s ours | tok/s llama-server | ratio | TTFT p50 / p99 ours (s) | TTFT p50 / p99 "
          "llama-server (s) | ITL p50 / p99 ours (ms) | ITL p50 / p99 llama-server (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        o, l = "switchyard", "llama-server"
        print(f"| {c} | {med(o, c, 'tok_s'):.1f} | {med(l, c, 'tok_s'):.1f} | "
              f"{med(o, c, 'tok_s') / med(l, c, 'tok_s'):.2f}× | "
              f"{med(o, c, 'ttft_p50'):.2f} / {med(o, c, 'ttft_p99'):.2f} | "
              f"{med(l, c, 'ttft_p50'):.2f} / {med(l, c, 'ttft_p99'):.2f} | "
              f"{1000 * med(o, c, 'itl_p50'):.0f} / {1000 * med(o, c, 'itl_p99'):.0f} | "
              f"{1000 * med(l, c, 'itl_p50'):.0f} / {1000 * med(l, c, 'itl_p99'):.0f} |")


if __name__ == "__main__":
    main()
