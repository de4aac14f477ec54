#!/usr/bin/env python3
"""Cold start: how long a request for a model that is not loaded waits, next
to the physical floor (reading the file) and llama.cpp on the same file.

    python3 benches/cold_start.py [--rounds 3]

For each default model, alternating (A B A B ...) for `--rounds` rounds, with
the file in the page cache (every tool reads it once first):
- read:      reading the whole GGUF file (the floor for any loader);
- load:      switchyard's load as the pool measures it (`load_seconds`);
- ttft:      a streamed request's time to first token on an unloaded model
             (the load, the prompt's prefill and one token);
- llama.cpp: `llama-simple -n 1` as a whole process (load, prompt, one token).
The server runs with `preload = false`; between rounds the model is unloaded
through the admin API. Prints a markdown table of the medians.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import urllib.request

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    ("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf"),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout


def http(method, url, body=None, timeout=300):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def read_seconds(path):
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return time.perf_counter() - t


def ttft_seconds(url, model):
    t = time.perf_counter()
    resp = http("POST", url + "/v1/chat/completions", {
        "model": model, "stream": True, "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello"}]})
    for line in resp:
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                break
    ttft = time.perf_counter() - t
    resp.read()
    return ttft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    sh([str(ROOT / "scripts/fetch-models")])
    bin_dir = Path(sh([str(ROOT / "scripts/build-llama-cpp")]).strip())
    sh(["cargo", "build", "--release", "-q", "-p", "switchyard-server"])
    tmp = Path(tempfile.mkdtemp())
    catalog = "[router]\naudit_db = \"audit.db\"\n"
    for model_id, file in MODELS:
        catalog += f'\n[[models]]\nid = "{model_id}"\nsource = "{ROOT / "models" / file}"\npreload = false\n'
    (tmp / "models.toml").write_text(catalog)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), RUST_LOG="warn", SWITCHYARD_API_KEY="")
    server = subprocess.Popen([str(ROOT / "target/release/switchyard"), "serve", "--config", str(tmp / "models.toml"),
                               "--addr", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if http("GET", url + "/ready", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.1)
        runs = {}
        for rnd in range(args.rounds):
            for model_id, file in MODELS:
                path = ROOT / "models" / file
                runs.setdefault((model_id, "read"), []).append(read_seconds(path))
                runs.setdefault((model_id, "ttft"), []).append(ttft_seconds(url, model_id))
                card = json.load(http("GET", url + f"/v1/models/{model_id}"))
                runs.setdefault((model_id, "load"), []).append(card["load_seconds"])
                http("POST", url + f"/admin/models/{model_id}/unload").read()
                t = time.perf_counter()
                subprocess.run([str(bin_dir / "llama-simple"), "-m", str(path), "-n", "1", "Hello"],
                               check=True, capture_output=True)
                runs.setdefault((model_id, "llama.cpp"), []).append(time.perf_counter() - t)
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    finally:
        server.kill()
    print(f"\nthreads={args.threads} rounds={args.rounds} (medians, seconds, page cache warm)\n")
    print("| model | file MB | read (floor) | switchyard load | switchyard cold TTFT | llama.cpp process |")
    print("|---|---:|---:|---:|---:|---:|")
    for model_id, file in MODELS:
        med = lambda k: statistics.median(runs[(model_id, k)])
        mb = (ROOT / "models" / file).stat().st_size / 1e6
        print(f"| {model_id} | {mb:.0f} | {med('read'):.3f} | {med('load'):.3f} | {med('ttft'):.3f} | {med('llama.cpp'):.3f} |")


if __name__ == "__main__":
    main()
