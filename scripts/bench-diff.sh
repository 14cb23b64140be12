#!/usr/bin/env bash
# Benchmark `orient diff` on a Qwen2-0.5B-shaped f32 model against its Flax twin.
#
# Shape: hidden 896, 24 layers, 14 heads, 2 KV heads (head_dim 64), intermediate 4864,
# vocab 151936, tied embeddings, q/k/v biases: 494 M parameters, 1.98 GB per file in f32.
#
# The HF model comes from `orient synth` and the twin from `orient convert --to flax` when those
# commands work; otherwise both are written by a numpy script run with $PYTHON (the Flax twin
# then follows the catalogue: Linear weights → transposed `kernel`, embed_tokens → `embedding`,
# RMSNorm keeps `weight`, biases unchanged). The script says which path it took.
#
# Reported (hyperfine, warm page cache):
#   1. `cat a b > /dev/null`             — a full read of both files from the page cache;
#   2. `orient diff A B`                 — the default (sampled screening, then one confirming pass);
#   3. `orient diff A B --full`          — full comparison from the start.
# and the ratio of 2 to 1. Needs ~4 GB of disk in $BENCH_DIR and ~6 GB of RAM (page cache).
#
# Usage: scripts/bench-diff.sh            (builds target/release/orient if missing)
#        BENCH_DIR=/tmp/x RUNS=5 scripts/bench-diff.sh
set -euo pipefail

cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/tmp/orient-bench-diff}
PYTHON=${PYTHON:-/work/venv-pt/bin/python}
RUNS=${RUNS:-5}
ORIENT=${ORIENT:-target/release/orient}
HF="$BENCH_DIR/qwen2-0.5b-hf"
FLAX="$BENCH_DIR/qwen2-0.5b-flax"

[ -x "$ORIENT" ] || cargo build --release -p orient
mkdir -p "$BENCH_DIR"

CONFIG='{
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
  "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
  "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
  "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float32"
}'

if [ ! -f "$HF/model.safetensors" ]; then
  rm -rf "$HF"
  mkdir -p "$HF"
  printf '%s\n' "$CONFIG" > "$HF/config.json"
  if "$ORIENT" synth "$HF/config.json" "$HF" >/dev/null 2>&1 && [ -f "$HF/model.safetensors" ]; then
    echo "HF model: orient synth"
  else
    echo "HF model: numpy script ($PYTHON) — orient synth is not available on this branch"
    "$PYTHON" - "$HF" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
out = sys.argv[1]
H, I, L, NH, NKV, V = 896, 4864, 24, 14, 2, 151936
D = H // NH
rng = np.random.default_rng(0)
def w(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
t = {"model.embed_tokens.weight": w(V, H), "model.norm.weight": 1 + w(H)}
for i in range(L):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = 1 + w(H)
    t[p + "post_attention_layernorm.weight"] = 1 + w(H)
    t[p + "self_attn.q_proj.weight"] = w(NH * D, H)
    t[p + "self_attn.q_proj.bias"] = w(NH * D)
    t[p + "self_attn.k_proj.weight"] = w(NKV * D, H)
    t[p + "self_attn.k_proj.bias"] = w(NKV * D)
    t[p + "self_attn.v_proj.weight"] = w(NKV * D, H)
    t[p + "self_attn.v_proj.bias"] = w(NKV * D)
    t[p + "self_attn.o_proj.weight"] = w(H, NH * D)
    t[p + "mlp.gate_proj.weight"] = w(I, H)
    t[p + "mlp.up_proj.weight"] = w(I, H)
    t[p + "mlp.down_proj.weight"] = w(H, I)
save_file(t, f"{out}/model.safetensors", metadata={"format": "pt"})
PY
  fi
fi

if [ ! -f "$FLAX/model.safetensors" ]; then
  rm -rf "$FLAX"
  if "$ORIENT" convert "$HF" "$FLAX" --to flax >/dev/null 2>&1 && [ -f "$FLAX/model.safetensors" ]; then
    echo "Flax twin: orient convert --to flax"
  else
    echo "Flax twin: numpy script ($PYTHON) — orient convert --to flax is not available on this branch"
    rm -rf "$FLAX"
    mkdir -p "$FLAX"
    cp "$HF/config.json" "$FLAX/config.json"
    "$PYTHON" - "$HF" "$FLAX" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
t = load_file(f"{src}/model.safetensors")
out = {}
for name, v in t.items():
    if name == "model.embed_tokens.weight":
        out["model.embed_tokens.embedding"] = v
    elif name.endswith("_proj.weight"):
        out[name[: -len("weight")] + "kernel"] = np.ascontiguousarray(v.T)
    else:
        out[name] = v
del t
save_file(out, f"{dst}/model.safetensors", metadata={"format": "flax"})
PY
  fi
fi

A="$HF/model.safetensors"
B="$FLAX/model.safetensors"
ls -l "$A" "$B"
echo "--- sanity: verdicts"
"$ORIENT" diff "$HF" "$FLAX" --expect-conversion hf-to-flax | tail -n 3

hyperfine --warmup 1 --runs "$RUNS" --export-json "$BENCH_DIR/hyperfine.json" \
  -n "cat both (full read, warm)" "cat '$A' '$B' > /dev/null" \
  -n "orient diff" "'$ORIENT' diff '$HF' '$FLAX' --expect-conversion hf-to-flax > /dev/null" \
  -n "orient diff --full" "'$ORIENT' diff '$HF' '$FLAX' --expect-conversion hf-to-flax --full > /dev/null"

"$PYTHON" - "$BENCH_DIR/hyperfine.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
cat = r["cat both (full read, warm)"]["median"]
for name in ("orient diff", "orient diff --full"):
    m = r[name]["median"]
    print(f"{name:20s} median {m:7.3f} s = {m / cat:5.2f} × a full read of both files ({cat:.3f} s)")
PY
