#!/usr/bin/env bash
# Benchmark of `orient convert` (issue 3), side by side in one run:
#   - hf→flax conversion of a Qwen2-0.5B-shaped f32 model (≈2 GB, made by `orient synth`)
#     against `cp` of the same file and against the obvious Python script
#     (safetensors.torch.load_file, .t().contiguous() per 2-D non-embedding weight, save_file);
#   - peak RSS of each (/usr/bin/time -v "Maximum resident set size");
#   - f32→bf16 and bf16→f32 conversion throughput of the same model (GB/s);
#   - optionally (--big) a Qwen2-7B-shaped bf16 model (≈15 GB; needs ≈35 GB free disk)
#     converted to flax, for peak RSS ≤ 1 GiB.
#
# Usage: scripts/bench-convert.sh [--big] [--big-layers N] [--runs N] [--dir WORKDIR] [--python PY]
#   --big-layers N: layers of the 7B-shaped model (default 28, the real count). Peak RSS
#   depends on the largest tensors (embedding, lm_head, MLP), which do not depend on N,
#   so a smaller N checks the same bound with less disk (N=6: ≈5 GB in, ≈5 GB out).
# Needs: cargo, hyperfine, /usr/bin/time, python3 (for the JSON summary); the Python
# baseline needs a venv with torch + safetensors (default /work/venv-pt).
#
# Caches: every command runs with its input in the page cache (a warm-up run first),
# so cp, orient and Python are compared on equal terms. Writes go to the page cache;
# `--no-fsync` rows compare with plain `cp`, the default (fsync) rows with `cp; sync FILE`.
set -euo pipefail

RUNS=5
BIG=0
BIG_LAYERS=28
WORK=${TMPDIR:-/tmp}/orient-bench
PY=/work/venv-pt/bin/python
while [[ $# -gt 0 ]]; do
  case "$1" in
    --big) BIG=1 ;;
    --big-layers) BIG_LAYERS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --dir) WORK=$2; shift ;;
    --python) PY=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -p orient --quiet
ORIENT=$ROOT/target/release/orient
mkdir -p "$WORK"
RESULTS=$WORK/results
rm -rf "$RESULTS"; mkdir -p "$RESULTS"

echo "== machine"
nproc; free -g | head -2; df -h "$WORK" | tail -1
"$ORIENT" --version

# ---------------------------------------------------------------- models
SMALL=$WORK/qwen2-0.5b-f32
if [[ ! -f $SMALL/model.safetensors ]]; then
  mkdir -p "$WORK/cfg-small"
  cat > "$WORK/cfg-small/config.json" <<'EOF'
{
  "architectures": ["Qwen2ForCausalLM"],
  "model_type": "qwen2",
  "hidden_size": 896,
  "intermediate_size": 4864,
  "num_hidden_layers": 24,
  "num_attention_heads": 14,
  "num_key_value_heads": 2,
  "vocab_size": 151936,
  "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "tie_word_embeddings": true,
  "hidden_act": "silu",
  "torch_dtype": "float32"
}
EOF
  echo "== synth 0.5B f32"
  /usr/bin/time -f "synth: %e s, peak RSS %M KiB" "$ORIENT" synth "$WORK/cfg-small" "$SMALL" --seed 1 --no-fsync --force
fi
ls -l "$SMALL"

PYSCRIPT=$WORK/transpose.py
cat > "$PYSCRIPT" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
out = {}
for k, v in sd.items():
    out[k] = v.t().contiguous() if v.dim() == 2 and "embed" not in k else v
save_file(out, sys.argv[2], metadata={"format": "pt"})
EOF

OUT=$WORK/out
mkdir -p "$OUT"
SRCFILE=$SMALL/model.safetensors

echo "== hf→flax vs cp vs python (warm cache, $RUNS runs each)"
hyperfine --warmup 1 --runs "$RUNS" --export-json "$RESULTS/small.json" \
  --prepare "rm -rf $OUT/*" \
  -n cp "cp $SRCFILE $OUT/copy.safetensors" \
  -n "orient --no-fsync" "$ORIENT convert $SMALL $OUT/flax --to flax --quiet --no-fsync" \
  -n "cp+fsync" "cp $SRCFILE $OUT/copy.safetensors && sync $OUT/copy.safetensors" \
  -n "orient (fsync)" "$ORIENT convert $SMALL $OUT/flax --to flax --quiet" \
  -n python "$PY $PYSCRIPT $SRCFILE $OUT/py.safetensors"

echo "== casts (warm cache)"
BF=$WORK/qwen2-0.5b-bf16
rm -rf "$BF"; "$ORIENT" convert "$SMALL" "$BF" --dtype bf16 --quiet --no-fsync
hyperfine --warmup 1 --runs "$RUNS" --export-json "$RESULTS/casts.json" \
  --prepare "rm -rf $OUT/*" \
  -n "f32→bf16" "$ORIENT convert $SMALL $OUT/bf16 --dtype bf16 --quiet --no-fsync" \
  -n "bf16→f32" "$ORIENT convert $BF $OUT/f32 --dtype f32 --quiet --no-fsync"

echo "== peak RSS (/usr/bin/time -v)"
rss() { # name, command...
  local name=$1; shift
  rm -rf "${OUT:?}"/*
  /usr/bin/time -v "$@" 2> "$RESULTS/time-$name.txt" > /dev/null
  local kb
  kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$RESULTS/time-$name.txt")
  printf '%-28s %8.1f MiB   (%s)\n' "$name" "$(echo "$kb/1024" | bc -l)" "$(awk -F': ' '/Elapsed/ {print $2}' "$RESULTS/time-$name.txt")"
  echo "$name $kb" >> "$RESULTS/rss.txt"
}
rss cp cp "$SRCFILE" "$OUT/copy.safetensors"
rss orient-flax "$ORIENT" convert "$SMALL" "$OUT/flax" --to flax --quiet --no-fsync
rss orient-f32-to-bf16 "$ORIENT" convert "$SMALL" "$OUT/bf16" --dtype bf16 --quiet --no-fsync
rss orient-bf16-to-f32 "$ORIENT" convert "$BF" "$OUT/f32" --dtype f32 --quiet --no-fsync
rss python "$PY" "$PYSCRIPT" "$SRCFILE" "$OUT/py.safetensors"

if [[ $BIG == 1 ]]; then
  echo "== 7B-shaped bf16, $BIG_LAYERS layers (28 layers ≈ 15 GB)"
  df -h "$WORK" | tail -1
  BIGM=$WORK/qwen2-7b-bf16-L$BIG_LAYERS
  if [[ ! -f $BIGM/config.json ]]; then
    mkdir -p "$WORK/cfg-big"
    cat > "$WORK/cfg-big/config.json" <<'EOF'
{
  "architectures": ["Qwen2ForCausalLM"],
  "model_type": "qwen2",
  "hidden_size": 3584,
  "intermediate_size": 18944,
  "num_hidden_layers": BIG_LAYERS,
  "num_attention_heads": 28,
  "num_key_value_heads": 4,
  "vocab_size": 152064,
  "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "tie_word_embeddings": false,
  "hidden_act": "silu",
  "torch_dtype": "bfloat16"
}
EOF
    sed -i "s/BIG_LAYERS/$BIG_LAYERS/" "$WORK/cfg-big/config.json"
    /usr/bin/time -f "synth 7B: %e s, peak RSS %M KiB" "$ORIENT" synth "$WORK/cfg-big" "$BIGM" --dtype bf16 --seed 1 --no-fsync --force
  fi
  du -sh "$BIGM"
  rss orient-7b-flax "$ORIENT" convert "$BIGM" "$OUT/big-flax" --to flax --quiet --no-fsync
  rss orient-7b-flax-fsync "$ORIENT" convert "$BIGM" "$OUT/big-flax" --to flax --quiet
  rm -rf "${OUT:?}"/*
fi

echo "== summary"
python3 - "$RESULTS" "$SRCFILE" "$BF/model.safetensors" <<'EOF'
import json, os, sys
res, src, bf = sys.argv[1], sys.argv[2], sys.argv[3]
def med(f):
    d = json.load(open(os.path.join(res, f)))
    return {r["command"]: (r["median"], r["min"], r["max"]) for r in d["results"]}
s = med("small.json")
for k, (m, lo, hi) in s.items():
    print(f"{k:22s} median {m:6.2f} s  (min {lo:.2f}, max {hi:.2f})")
print(f"orient/cp                 {s['orient --no-fsync'][0] / s['cp'][0]:.2f}x   (target <= 1.5)")
print(f"orient(fsync)/cp+fsync    {s['orient (fsync)'][0] / s['cp+fsync'][0]:.2f}x")
print(f"python/orient             {s['python'][0] / s['orient --no-fsync'][0]:.2f}x   (target >= 5)")
c = med("casts.json")
fs, bs = os.path.getsize(src), os.path.getsize(bf)
for k, (m, _, _) in c.items():
    inb, outb = (fs, bs) if k.startswith("f32") else (bs, fs)
    print(f"{k:10s} median {m:.2f} s: {inb/m/1e9:.2f} GB/s read, {outb/m/1e9:.2f} GB/s written")
for line in open(os.path.join(res, "rss.txt")):
    name, kb = line.split()
    print(f"peak RSS {name:26s} {int(kb)/1024:8.1f} MiB")
EOF
