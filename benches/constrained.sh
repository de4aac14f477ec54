#!/usr/bin/env bash
# Decode throughput with a JSON-schema constraint vs without, same model, same
# run, rounds alternated; prints JSON lines (median them). Also the per-token
# grammar-mask time. Usage: benches/constrained.sh [rounds] (after a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
# An open-ended schema (a long list of short strings), so that the grammar
# keeps decoding for the whole budget rather than finishing early.
schema='{"type":"object","properties":{"items":{"type":"array","items":{"type":"string","maxLength":8},"minItems":40}},"required":["items"],"additionalProperties":false}'
for round in $(seq "$rounds"); do
  for model in smollm2-135m-instruct gemma-3-270m; do
    target/release/switchyard bench --model "$model" --prompt-tokens 128 --gen-tokens 64 --concurrency 1,8 \
      | sed "s/^{/{\"round\":$round,\"model\":\"$model\",/"
    target/release/switchyard bench --model "$model" --prompt-tokens 128 --gen-tokens 64 --concurrency 1,8 \
      --json-schema "$schema" | sed "s/^{/{\"round\":$round,\"model\":\"$model\",/"
  done
done
