#!/usr/bin/env bash
# Benchmark of the mixture-of-experts forward (issue 10). Not a test.
#
#   scripts/bench-moe.sh
#
# A Mixtral-8x7B-shaped bf16 model cut to 2 layers (hidden 4096, intermediate 14336, 32 heads,
# 8 KV heads, 8 experts, top-2, vocab 32000, untied; 3.16 B parameters, 1.05 B active; 5.9 GiB)
# against a dense Mistral-shaped bf16 model of the same active parameter count (2 layers,
# intermediate 2 × 14336 = 28672, so one token's MLP work equals two experts'; 2.0 GiB), both
# from `orient synth`, both run on the same 128 tokens with `orient run --repeat 3 --keep-pages`:
# 3 forwards of the loaded model, the first of which faults the weights in (a warm-up); orient
# prints each time, then the best and median of the other two, with GFLOP/s = 2 · active
# parameters · tokens / s (less the lm_head rows of the positions whose logits are not kept),
# where a token's active parameters count only the k experts it is routed to.
#
# Env: BENCH_DIR (default /work/bench-tmp/moe) holds the models; they are deleted at the end
# unless KEEP=1. Needs ≈ 8 GiB free there (keep 10 GB more on a shared disk).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/work/bench-tmp/moe}
mkdir -p "$BENCH_DIR"

cargo build --release -p orient >/dev/null
ORIENT=$PWD/target/release/orient

cleanup() { [[ ${KEEP:-0} == 1 ]] || rm -rf "$BENCH_DIR/mixtral-8x7b-2l-bf16" "$BENCH_DIR/dense-2l-bf16"; }
trap cleanup EXIT

synth() { # CONFIG_JSON OUT
  [[ -e $2 ]] && return
  local cfg; cfg=$(mktemp -d)
  printf '%s\n' "$1" > "$cfg/config.json"
  "$ORIENT" synth "$cfg" "$2" --dtype bf16 --no-fsync --quiet
  rm -r "$cfg"
}
MIXTRAL='{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
 "intermediate_size": 14336, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
 "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768,
 "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "hidden_act": "silu", "sliding_window": null,
 "tie_word_embeddings": false, "torch_dtype": "bfloat16"}'
DENSE='{"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
 "intermediate_size": 28672, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
 "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
 "hidden_act": "silu", "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}'

df -h "$BENCH_DIR" | tail -n 1
MOE=$BENCH_DIR/mixtral-8x7b-2l-bf16
DENSE_M=$BENCH_DIR/dense-2l-bf16
synth "$MIXTRAL" "$MOE"
synth "$DENSE" "$DENSE_M"
du -sh "$MOE" "$DENSE_M"

# 128 deterministic ids < 32000.
P128=$(seq 0 127 | awk '{ printf "%s%d", (NR > 1 ? "," : ""), ($1 * 7919 + 13) % 32000 }')

for M in "$MOE" "$DENSE_M"; do
  echo "== $(basename "$M"), 128 tokens (forward only, model loaded; 1 warm-up + 2 timed)"
  "$ORIENT" run "$M" --tokens "$P128" --repeat 3 --keep-pages 2>&1 >/dev/null | tail -n 4
done
