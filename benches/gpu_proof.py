"""Decode throughput on a Llama-3.1-8B-shaped bf16 model with random weights:
switchyard (CUDA) vs Hugging Face transformers `generate`, and vs the
bandwidth roofline. Run by benches/gpu_proof.sh on the GPU machine.

The checkpoint is written here (no download): random bf16 weights with the
real shapes and config keys, and a byte-level tokenizer.json whose vocabulary
covers all 128256 ids (so every sampled id decodes).
"""

import argparse
import json
import os
import subprocess
import time

SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
LEVELS = [1, 8, 64, 256]
PROMPT, OUTPUT = 512, 128


def write_checkpoint(d):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.exists(os.path.join(d, "config.json")):
        return
    os.makedirs(d, exist_ok=True)
    cfg = LlamaConfig(**SHAPE, tie_word_embeddings=False, torch_dtype="bfloat16",
                      bos_token_id=128000, eos_token_id=128001)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.save_pretrained(d, safe_serialization=True, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    # Byte-level BPE: 256 byte symbols, then one symbol per remaining id.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bytes_to_unicode = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(bytes_to_unicode))}
    for i in range(len(vocab), SHAPE["vocab_size"]):
        vocab[f"<t{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False}, f)


def copy_bandwidth():
    """Device-to-device copy bandwidth (bytes/s): read + write of 4 GiB."""
    import torch

    src = torch.empty(1 << 31, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        dst.copy_(src)
    torch.cuda.synchronize()
    bw = 2 * src.numel() * src.element_size() * n / (time.perf_counter() - t)
    del src, dst
    torch.cuda.empty_cache()
    return bw


def transformers_decode(d, n):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(n)
    ids = torch.randint(1000, SHAPE["vocab_size"] - 1000, (n, PROMPT), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(new):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(2)  # warm-up
    prefill = timed(1)
    total = timed(OUTPUT)
    del model
    torch.cuda.empty_cache()
    return n * (OUTPUT - 1) / max(total - prefill, 1e-9)


def switchyard_decode(binary, d, work):
    catalog = os.path.join(work, "gpu.toml")
    with open(catalog, "w") as f:
        f.write(f"""[engine]
device = "cuda:0"
gpu_memory_utilization = 0.9
max_num_seqs = 256
max_num_batched_tokens = 8192

[[models]]
id = "llama-8b-random"
source = "{d}"
""")
    out = subprocess.run(
        [binary, "bench", "--model", "llama-8b-random", "--config", catalog,
         "--prompt-tokens", str(PROMPT), "--gen-tokens", str(OUTPUT),
         "--concurrency", ",".join(map(str, LEVELS))],
        capture_output=True, text=True, timeout=1800)
    print(out.stderr[-4000:])
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return {r["concurrency"]: r for r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", required=True)
    a = ap.parse_args()
    import torch

    d = os.path.join(a.work, "llama-3.1-8b-random")
    t = time.perf_counter()
    write_checkpoint(d)
    print(f"checkpoint ready in {time.perf_counter() - t:.0f}s")
    weight_bytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                       if f.endswith(".safetensors"))
    bw = copy_bandwidth()
    roofline = bw / weight_bytes  # tokens/s of one sequence if decode only streams the weights
    ours = switchyard_decode(a.bin, d, a.work)
    result = {"device": torch.cuda.get_device_name(0), "weight_bytes": weight_bytes,
              "copy_bandwidth_GBps": bw / 1e9, "roofline_tok_s_batch1": roofline, "levels": []}
    for n in LEVELS:
        theirs = transformers_decode(d, n)
        mine = ours.get(n, {}).get("decode_tok_s")
        result["levels"].append({"concurrency": n, "switchyard_decode_tok_s": mine,
                                 "transformers_decode_tok_s": theirs})
        print(json.dumps(result["levels"][-1]), flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"Device: {result['device']}; weights {weight_bytes / 2**30:.1f} GiB; copy bandwidth "
             f"{bw / 1e9:.0f} GB/s; roofline (batch 1) {roofline:.1f} tok/s", "",
             "| concurrent | switchyard decode tok/s | transformers decode tok/s | ratio | vs roofline (batch 1) |",
             "|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:
        mine, theirs = r["switchyard_decode_tok_s"], r["transformers_decode_tok_s"]
        ratio = f"{mine / theirs:.2f}x" if mine and theirs else "n/a"
        roof = f"{mine / roofline:.0%}" if mine and r["concurrency"] == 1 else ""
        lines.append(f"| {r['concurrency']} | {mine or 'failed'} | {theirs:.1f} | {ratio} | {roof} |")
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
