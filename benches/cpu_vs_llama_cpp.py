#!/usr/bin/env python3
"""CPU throughput of switchyard vs llama.cpp on the same GGUF files, in one run.

    python3 benches/cpu_vs_llama_cpp.py [--threads 2] [--pp 128] [--tg 64] [--npl 1,8] [--rounds 3]

Builds llama.cpp from the llama-cpp-python sdist (scripts/build-llama-cpp, not
committed) and switchyard (cargo build --release), then for each default model
measures prefill and decode tokens/s at each concurrency with
`llama-batched-bench` and `switchyard bench` (same prompt/generation lengths,
same thread count), alternating the two (A B A B ...) for `--rounds` rounds so
drift in the machine hits both alike, and prints a markdown table of the
medians with the ratios.
"""
import argparse
import json
import os
import statistics
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
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sh([str(ROOT / "scripts/fetch-models")])
    bin_dir = Path(sh([str(ROOT / "scripts/build-llama-cpp")]).strip())
    sh(["cargo", "build", "--release", "-q", "-p", "switchyard-server"])
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), RUST_LOG="warn")
    runs = {}  # (model, seqs, engine) -> [(prefill, decode)]
    for rnd in range(args.rounds):
        for model_id, file in MODELS:
            out = sh([str(bin_dir / "llama-batched-bench"), "-m", str(ROOT / "models" / file), "-c", "4096",
                      "-b", "512", "-ub", "512", "-npp", str(args.pp), "-ntg", str(args.tg), "-npl", args.npl,
                      "-t", str(args.threads), "--output-format", "jsonl"])
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    runs.setdefault((model_id, r["pl"], "llama.cpp"), []).append((r["speed_pp"], r["speed_tg"]))
            out = sh([str(ROOT / "target/release/switchyard"), "bench", "--model", model_id, "--prompt-tokens",
                      str(args.pp), "--gen-tokens", str(args.tg), "--concurrency", args.npl], env=env)
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    runs.setdefault((model_id, r["concurrency"], "ours"), []).append(
                        (r["prefill_tok_s"], r["decode_tok_s"]))
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    rows = []
    for model_id, _ in MODELS:
        for n in [int(x) for x in args.npl.split(",")]:
            ours, peer = runs[(model_id, n, "ours")], runs[(model_id, n, "llama.cpp")]
            rows.append((model_id, n, med(ours, 0), med(peer, 0), med(ours, 1), med(peer, 1)))
    print(f"threads={args.threads} prompt={args.pp} gen={args.tg} rounds={args.rounds} (medians)\n")
    print("| model | seqs | prefill tok/s (ours) | prefill tok/s (llama.cpp) | ratio | decode tok/s (ours) | decode tok/s (llama.cpp) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, n, op, lp, od, ld in rows:
        print(f"| {m} | {n} | {op:.1f} | {lp:.1f} | {op / lp:.2f}× | {od:.1f} | {ld:.1f} | {od / ld:.2f}× |")


if __name__ == "__main__":
    main()
