"""Decode throughput on a Llama-3.1-8B-shaped bf16 model with random weights:
switchyard (CUDA) vs Hugging Face transformers `generate`, and vs the
bandwidth roofline. Run by benches/gpu_proof.sh on the GPU machine.

The checkpoint is written here with numpy only (no download, no torch): random
bf16 weights with the real shapes and config keys in safetensors shards, and a
byte-level tokenizer.json whose vocabulary covers every id (so every sampled
id decodes). `--smoke` runs the switchyard half on a tiny shape on the CPU
(no torch needed), which is how the script is checked on machines without a GPU.
"""

import argparse
import json
import os
import struct
import subprocess
import time

import numpy as np

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
SMOKE_SHAPE = dict(SHAPE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=4096)
LEVELS = [1, 8, 64, 256]
PROMPT, OUTPUT = 512, 128


def bf16_bytes(a):
    """float32 array -> bf16 bytes (round to nearest even)."""
    u = a.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def save_safetensors(path, tensors):
    """tensors: list of (name, shape, bytes) in bf16."""
    header, offset = {}, 0
    for name, shape, data in tensors:
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, data in tensors:
            f.write(data)


def write_checkpoint(d, shape):
    if os.path.exists(os.path.join(d, "config.json")):
        return
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    h, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    hd = h // heads

    def rand(*dims):
        return bf16_bytes(rng.standard_normal(dims, dtype=np.float32) * 0.02)

    def ones(n):
        return bf16_bytes(np.ones(n, dtype=np.float32))

    shards, current, size, index = [], [], 0, {}

    def add(name, dims, data):
        nonlocal current, size
        current.append((name, dims, data))
        size += len(data)
        if size > 4 << 30:
            flush()

    def flush():
        nonlocal current, size
        if current:
            shards.append(current)
            current, size = [], 0

    add("model.embed_tokens.weight", (v, h), rand(v, h))
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", (h,), ones(h))
        add(p + "post_attention_layernorm.weight", (h,), ones(h))
        add(p + "self_attn.q_proj.weight", (heads * hd, h), rand(heads * hd, h))
        add(p + "self_attn.k_proj.weight", (kv * hd, h), rand(kv * hd, h))
        add(p + "self_attn.v_proj.weight", (kv * hd, h), rand(kv * hd, h))
        add(p + "self_attn.o_proj.weight", (h, heads * hd), rand(h, heads * hd))
        add(p + "mlp.gate_proj.weight", (f, h), rand(f, h))
        add(p + "mlp.up_proj.weight", (f, h), rand(f, h))
        add(p + "mlp.down_proj.weight", (h, f), rand(h, f))
    add("model.norm.weight", (h,), ones(h))
    add("lm_head.weight", (v, h), rand(v, h))
    flush()
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(os.path.join(d, fname), shard)
        index.update({name: fname for name, _, _ in shard})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": index}, fh)
    config = dict(shape, model_type="llama", architectures=["LlamaForCausalLM"],
                  head_dim=hd, hidden_act="silu", tie_word_embeddings=False,
                  torch_dtype="bfloat16", attention_bias=False, mlp_bias=False,
                  bos_token_id=0, eos_token_id=1)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(config, fh)
    # Byte-level BPE: the 256 byte symbols (GPT-2's byte-to-unicode map), then one symbol per id.
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {chr(c): b for b, c in zip(bs, cs)}
    for i in range(256, v):
        vocab[f"<t{i}>"] = i
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": level,
           "post_processor": None, "decoder": level,
           "model": {"type": "BPE", "dropout": None, "unk_token": None,
                     "continuing_subword_prefix": None, "end_of_word_suffix": None,
                     "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": []}}
    with open(os.path.join(d, "tokenizer.json"), "w") as fh:
        json.dump(tok, fh)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as fh:
        json.dump({"add_bos_token": False}, fh)


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


def switchyard_decode(binary, d, work, device, levels, prompt, output):
    catalog = os.path.join(work, "gpu.toml")
    with open(catalog, "w") as f:
        f.write(f"""[engine]
device = "{device}"
gpu_memory_utilization = 0.9
max_num_seqs = 256
max_num_batched_tokens = 8192

[[models]]
id = "llama-8b-random"
source = "{d}"
""")
    out = subprocess.run(
        [binary, "bench", "--model", "llama-8b-random", "--config", catalog,
         "--prompt-tokens", str(prompt), "--gen-tokens", str(output),
         "--concurrency", ",".join(map(str, levels))],
        capture_output=True, text=True, timeout=1800)
    print(out.stderr[-4000:])
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return {r["concurrency"]: r for r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shape on the CPU, switchyard only (checks the script without a GPU)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.smoke:
        d = os.path.join(a.work, "llama-tiny-random")
        write_checkpoint(d, SMOKE_SHAPE)
        ours = switchyard_decode(a.bin, d, a.work, "cpu", [1, 2], 16, 8)
        print(json.dumps(ours))
        assert set(ours) == {1, 2} and all(r["decode_tok_s"] > 0 for r in ours.values()), ours
        return
    import torch

    d = os.path.join(a.work, "llama-3.1-8b-random")
    t = time.perf_counter()
    write_checkpoint(d, SHAPE)
    print(f"checkpoint ready in {time.perf_counter() - t:.0f}s")
    weight_bytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                       if f.endswith(".safetensors"))
    bw = copy_bandwidth()
    roofline = bw / weight_bytes  # tokens/s of one sequence if decode only streams the weights
    ours = switchyard_decode(a.bin, d, a.work, "cuda:0", LEVELS, PROMPT, OUTPUT)
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
