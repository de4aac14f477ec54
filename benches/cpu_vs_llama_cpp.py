#!/usr/bin/env python3
"""CPU throughput of switchyard vs llama.cpp on the same GGUF files, in one run.

    python3 benches/cpu_vs_llama_cpp.py [--threads 2] [--pp 128] [--tg 64] [--npl 1,8]

Builds llama.cpp from the llama-cpp-python sdist (scripts/build-llama-cpp, not
committed) and switchyard (cargo build --release), then for each default model
measures prefill and decode tokens/s at each concurrency with
`llama-batched-bench` and `switchyard bench` (same prompt/generation lengths,
same thread count), and prints a markdown table with the ratios.
"""
import argparse
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    ("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf"),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--npl", default="1,8")
    args = ap.parse_args()
    sh([str(ROOT / "scripts/fetch-models")])
    bin_dir = Path(sh([str(ROOT / "scripts/build-llama-cpp")]).strip())
    sh(["cargo", "build", "--release", "-q", "-p", "switchyard-server"])
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), RUST_LOG="warn")
    rows = []
    for model_id, file in MODELS:
        llama = {}
        out = sh([str(bin_dir / "llama-batched-bench"), "-m", str(ROOT / "models" / file), "-c", "4096",
                  "-b", "512", "-ub", "512", "-npp", str(args.pp), "-ntg", str(args.tg), "-npl", args.npl,
                  "-t", str(args.threads), "--output-format", "jsonl"])
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                llama[r["pl"]] = (r["speed_pp"], r["speed_tg"])
        out = sh([str(ROOT / "target/release/switchyard"), "bench", "--model", model_id, "--prompt-tokens",
                  str(args.pp), "--gen-tokens", str(args.tg), "--concurrency", args.npl], env=env)
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                n = r["concurrency"]
                lp, lt = llama[n]
                rows.append((model_id, n, r["prefill_tok_s"], lp, r["decode_tok_s"], lt))
    print(f"threads={args.threads} prompt={args.pp} gen={args.tg}\n")
    print("| model | seqs | prefill tok/s (ours) | prefill tok/s (llama.cpp) | ratio | decode tok/s (ours) | decode tok/s (llama.cpp) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, n, op, lp, od, ld in rows:
        print(f"| {m} | {n} | {op:.1f} | {lp:.1f} | {op / lp:.2f}× | {od:.1f} | {ld:.1f} | {od / ld:.2f}× |")


if __name__ == "__main__":
    main()
