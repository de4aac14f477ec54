#!/usr/bin/env bash
# The CUDA proof, in one run on an H100/H200 (the device tool's machine: CUDA
# 13.0 driver, PyTorch + transformers, no Rust, no network). Build and pack the
# binary on the CPU machine first:
#
#   scripts/build-cuda --bundle            # .gpu-bundle/switchyard.xz (+ .sha256)
#   # device tool: carry [".gpu-bundle", "models/SmolLM2-135M-Instruct.Q4_1.gguf"]
#   benches/gpu_proof.sh                   # logs and results under $OUT (or ./gpu-proof)
#
# Steps (each logged in full; a failing step does not stop the others):
#   1. kernels vs the reference path on random inputs (`switchyard kernel-check`)
#   2. SmolLM2 greedy tokens, 32 steps: CUDA vs CPU (same binary)
#   3. decode throughput on a Llama-3.1-8B-shaped bf16 model with random weights
#      (written here) at 1, 8, 64, 256 concurrent sequences (prompt 512,
#      output 128), vs Hugging Face transformers `generate` on the same shapes,
#      and vs the bandwidth roofline (weight bytes / measured copy bandwidth)
# Results: $OUT/results.json and a markdown table $OUT/table.md for benches/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-proof}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/switchyard-proof}
mkdir -p "$WORK"
exec > >(tee "$OUT/proof.log") 2>&1

echo "== device"; nvidia-smi || true

BIN=$WORK/switchyard
if [[ ! -x $BIN ]]; then
  python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" \
    .gpu-bundle/switchyard.xz "$BIN" && chmod +x "$BIN"
  [[ -f .gpu-bundle/switchyard.sha256 ]] && echo "$(cat .gpu-bundle/switchyard.sha256)  $BIN" | sha256sum -c -
fi
# cuBLAS / cuRAND / cudart 13 from the CUDA install or from pip's nvidia wheels.
LIBS=$(python3 - <<'EOF'
import glob, os, site
dirs = set()
roots = ["/usr/local/cuda/lib64", "/usr/local/cuda-13.0/lib64", "/usr/lib/x86_64-linux-gnu"]
for sp in site.getsitepackages():
    roots += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
for r in roots:
    for lib in ("libcublas.so.13", "libcurand.so.10", "libcudart.so.13", "libnvrtc.so.13"):
        if os.path.exists(os.path.join(r, lib)):
            dirs.add(r)
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH=$LIBS:${LD_LIBRARY_PATH:-}
echo "== libraries: $LD_LIBRARY_PATH"; ldd "$BIN" | grep -E "cuda|cublas|curand|nvrtc"

echo "== 1. kernels vs reference"
"$BIN" kernel-check --device cuda:0 | tee "$OUT/kernel_check.jsonl"
echo "kernel-check exit ${PIPESTATUS[0]}"

echo "== 2. SmolLM2 greedy, CUDA vs CPU"
if [[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]]; then
  for dev in cpu cuda:0; do
    SWITCHYARD_DEVICE=$dev "$BIN" generate --model smollm2-135m-instruct --config models.toml \
      --prompt "Name three colours and explain why the sky is blue." --max-tokens 32 --temperature 0 \
      > "$OUT/greedy-${dev%%:*}.txt" 2> "$OUT/greedy-${dev%%:*}.log"
    echo "$dev exit $?"
  done
  if cmp -s "$OUT/greedy-cpu.txt" "$OUT/greedy-cuda.txt"; then echo "greedy: identical"; else
    echo "greedy: DIFFERENT"; diff "$OUT/greedy-cpu.txt" "$OUT/greedy-cuda.txt"; fi
else
  echo "models/SmolLM2-135M-Instruct.Q4_1.gguf not carried: skipped"
fi

echo "== 3. Llama-3.1-8B-shaped decode"
python3 benches/gpu_proof.py --work "$WORK" --out "$OUT" --bin "$BIN"
echo "gpu_proof.py exit $?"
ls -la "$OUT"
