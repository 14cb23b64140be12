#!/usr/bin/env bash
# Benchmark of the formats other than safetensors (issue 11, "Numbers"), in one run:
#   (a) `orient inspect` of a Qwen2-7B-shaped F16 GGUF file (339 tensors) and of a
#       Qwen2-7B-shaped bf16 `pytorch_model-0000k-of-00004.bin` set (+ index, config.json),
#       target ≤ 10 ms each. Both are sparse: the GGUF header is written with gguf-py's
#       GGUFWriter and the file extended to its full length without data; the .bin shards
#       are torch.save'd under torch.serialization.skip_data() (real zip64 archives and
#       pickles, storages reserved but not written). Checks that inspect reads no data:
#       the files' pages are dropped from the page cache (posix_fadvise) before one run and
#       counted with `fincore` after it.
#   (b) `orient convert` of a Qwen2-0.5B-shaped F16 GGUF file (≈1 GB of random data) to HF
#       safetensors, durable (fsync), against `cp` + `sync` of the same file; target ≤ 1.5×.
#   (c) `orient convert --dtype f32` of the same model quantized to Q8_0 and to Q4_0
#       (gguf.quants): dequantization throughput in GB/s of f32 output (target ≥ 1 GB/s).
#   Peak RSS of each conversion with /usr/bin/time -v.
#
# Usage: scripts/bench-formats.sh [--runs N] [--keep]
# Env:   BENCH_DIR (default /work/bench-tmp/formats-bench; needs ≈6 GB free: the 7B-shaped
#        inputs are holes), PY (default /work/venv-pt/bin/python: numpy, torch, gguf).
# The inputs are deleted at the end unless --keep. Not a test: run by hand, on a quiet machine.
set -euo pipefail

RUNS=5
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --keep) KEEP=1 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
BENCH_DIR=${BENCH_DIR:-/work/bench-tmp/formats-bench}
PY=${PY:-/work/venv-pt/bin/python}
for tool in hyperfine fincore /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -p orient --quiet
ORIENT=$ROOT/target/release/orient
mkdir -p "$BENCH_DIR"
[[ $KEEP == 1 ]] || trap 'rm -rf "$BENCH_DIR"' EXIT
RESULTS=$BENCH_DIR/results
OUT=$BENCH_DIR/out
rm -rf "$RESULTS" "$OUT"; mkdir -p "$RESULTS" "$OUT"

echo "== machine"
nproc; free -g | head -2; df -h "$BENCH_DIR" | tail -1; uptime
"$ORIENT" --version

# ---------------------------------------------------------------- inputs
cat > "$BENCH_DIR/gen.py" <<'EOF'
import json, os, sys
import numpy as np

what, d = sys.argv[1], sys.argv[2]


def qwen2_hf(H, L, NH, NKV, I, V, tied):
    D = H // NH
    t = [("model.embed_tokens.weight", [V, H])]
    for i in range(L):
        p = f"model.layers.{i}."
        t += [
            (p + "input_layernorm.weight", [H]),
            (p + "self_attn.q_proj.weight", [NH * D, H]), (p + "self_attn.q_proj.bias", [NH * D]),
            (p + "self_attn.k_proj.weight", [NKV * D, H]), (p + "self_attn.k_proj.bias", [NKV * D]),
            (p + "self_attn.v_proj.weight", [NKV * D, H]), (p + "self_attn.v_proj.bias", [NKV * D]),
            (p + "self_attn.o_proj.weight", [H, NH * D]),
            (p + "post_attention_layernorm.weight", [H]),
            (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
            (p + "mlp.down_proj.weight", [H, I]),
        ]
    t += [("model.norm.weight", [H])]
    if not tied:
        t += [("lm_head.weight", [V, H])]
    return t


def config(H, L, NH, NKV, I, V, tied, dtype):
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": H,
        "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH,
        "num_key_value_heads": NKV, "vocab_size": V, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": tied,
        "hidden_act": "silu", "torch_dtype": dtype,
    }


def gguf_writer(path, H, L, NH, NKV, I, V, file_type):
    import gguf

    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("qwen2 bench")
    w.add_block_count(L)
    w.add_context_length(32768)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-06)
    w.add_vocab_size(V)
    w.add_file_type(file_type)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, L)
    return w, lambda name: tmap.get_name(name, try_suffixes=(".weight", ".bias"))


SEVEN_B = (3584, 28, 28, 4, 18944, 152064)
HALF_B = (896, 24, 14, 2, 4864, 151936)

if what == "gguf7b":
    # Header only, then the file extended to its full length: the data region is a hole.
    import gguf

    w, name = gguf_writer(d, *SEVEN_B, gguf.LlamaFileType.MOSTLY_F16)
    total = 0
    for n, shape in qwen2_hf(*SEVEN_B, tied=False):
        nbytes = 2 * int(np.prod(shape))
        w.add_tensor_info(name(n), shape, np.dtype(np.float16), nbytes)
        total += gguf.GGUFWriter.ggml_pad(nbytes, w.data_alignment)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = gguf.GGUFWriter.ggml_pad(os.path.getsize(d), w.data_alignment)
    with open(d, "r+b") as f:
        f.truncate(start + total)
    print(f"{d}: {len(qwen2_hf(*SEVEN_B, tied=False))} tensors, {start + total} bytes, header {start} bytes")
elif what == "bin7b":
    # torch.save under skip_data(): real archives and pickles, storages reserved, not written.
    # torch.empty is lazily allocated, so nothing is touched here either.
    import torch

    os.makedirs(d, exist_ok=True)
    tensors = qwen2_hf(*SEVEN_B, tied=False)
    # Consecutive tensors, a quarter of the bytes each (save_pretrained's order).
    sizes = [2 * int(np.prod(shape)) for _, shape in tensors]
    quarter, shards, acc = sum(sizes) / 4, [[] for _ in range(4)], 0
    for t, n in zip(tensors, sizes):
        shards[min(3, int(acc // quarter))].append(t)
        acc += n
    weight_map, total = {}, 0
    for k, group in enumerate(shards):
        fname = f"pytorch_model-{k + 1:05d}-of-00004.bin"
        sd = {n: torch.empty(shape, dtype=torch.bfloat16) for n, shape in group}
        with torch.serialization.skip_data():
            torch.save(sd, os.path.join(d, fname))
        for n, t in sd.items():
            weight_map[n] = fname
            total += t.numel() * 2
        del sd
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config(*SEVEN_B, tied=False, dtype="bfloat16"), f, indent=2)
    print(f"{d}: {len(tensors)} tensors, {total} bytes of data in 4 shards")
elif what == "small":
    # Qwen2-0.5B-shaped (tied), random N(0, 0.02) data: F16 file, a Q8_0 and a Q4_0 file
    # (2-D tensors quantized by gguf.quants, norms and biases F32, as llama.cpp does).
    import gguf

    rng = np.random.default_rng(1)
    data = {}
    for n, shape in qwen2_hf(*HALF_B, tied=True):
        if len(shape) == 1:
            data[n] = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        else:
            data[n] = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
    quants = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    for kind in ("f16", "q8_0", "q4_0"):
        path = os.path.join(d, f"qwen2-0.5b-{kind}.gguf")
        ft = {
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        }[kind]
        w, name = gguf_writer(path, *HALF_B, ft)
        for n, a in data.items():
            if kind in quants and a.ndim == 2:
                q = gguf.quants.quantize(a.astype(np.float32), quants[kind])
                w.add_tensor(name(n), q, raw_shape=q.shape, raw_dtype=quants[kind])
            else:
                w.add_tensor(name(n), a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(f"{path}: {os.path.getsize(path)} bytes")
EOF

G7=$BENCH_DIR/qwen2-7b-f16.gguf
B7=$BENCH_DIR/qwen2-7b-bin
F16=$BENCH_DIR/qwen2-0.5b-f16.gguf
Q8=$BENCH_DIR/qwen2-0.5b-q8_0.gguf
Q4=$BENCH_DIR/qwen2-0.5b-q4_0.gguf
echo "== inputs"
[[ -f $G7 ]] || "$PY" "$BENCH_DIR/gen.py" gguf7b "$G7"
[[ -f $B7/config.json ]] || "$PY" "$BENCH_DIR/gen.py" bin7b "$B7"
[[ -f $Q4 ]] || /usr/bin/time -f "0.5B F16, Q8_0, Q4_0 files: %e s" "$PY" "$BENCH_DIR/gen.py" small "$BENCH_DIR"
ls -ls "$G7" "$B7" "$F16" "$Q8" "$Q4"

# ---------------------------------------------------------------- (a) inspect
echo "== (a) inspect, 7B-shaped (sparse), warm cache"
hyperfine --warmup 3 --export-json "$RESULTS/inspect.json" \
  -n "gguf" "$ORIENT inspect $G7" \
  -n "gguf --json" "$ORIENT inspect $G7 --json" \
  -n "bin" "$ORIENT inspect $B7" \
  -n "bin --json" "$ORIENT inspect $B7 --json"

echo "== (a) pages of the inputs in the page cache after one cold inspect (fincore)"
"$PY" - "$G7" "$B7"/*.bin <<'EOF'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
"$ORIENT" inspect "$G7" > /dev/null
"$ORIENT" inspect "$B7" > /dev/null
fincore "$G7" "$B7"/*.bin | tee "$RESULTS/fincore.txt"
/usr/bin/time -v "$ORIENT" inspect "$G7" 2> "$RESULTS/time-inspect-gguf.txt" > /dev/null
/usr/bin/time -v "$ORIENT" inspect "$B7" 2> "$RESULTS/time-inspect-bin.txt" > /dev/null

# ---------------------------------------------------------------- (b), (c) convert
echo "== (b) F16 GGUF → HF safetensors vs cp + sync; (c) Q8_0, Q4_0 → f32 (warm cache, $RUNS runs each)"
hyperfine --warmup 1 --runs "$RUNS" --export-json "$RESULTS/convert.json" \
  --prepare "rm -rf $OUT/*" \
  -n "cp+sync" "cp $F16 $OUT/copy.gguf && sync $OUT/copy.gguf" \
  -n "f16 (fsync)" "$ORIENT convert $F16 $OUT/hf --quiet" \
  -n "cp" "cp $F16 $OUT/copy.gguf" \
  -n "f16 --no-fsync" "$ORIENT convert $F16 $OUT/hf --quiet --no-fsync" \
  -n "q8_0→f32 --no-fsync" "$ORIENT convert $Q8 $OUT/f32 --dtype f32 --quiet --no-fsync" \
  -n "q8_0→f32 (fsync)" "$ORIENT convert $Q8 $OUT/f32 --dtype f32 --quiet" \
  -n "q4_0→f32 (fsync)" "$ORIENT convert $Q4 $OUT/f32 --dtype f32 --quiet"

echo "== peak RSS (/usr/bin/time -v)"
rss() { # name, command...
  local name=$1; shift
  rm -rf "${OUT:?}"/*
  /usr/bin/time -v "$@" 2> "$RESULTS/time-$name.txt" > /dev/null
}
rss f16 "$ORIENT" convert "$F16" "$OUT/hf" --quiet
rss q8_0 "$ORIENT" convert "$Q8" "$OUT/f32" --dtype f32 --quiet --no-fsync
rss q8_0-fsync "$ORIENT" convert "$Q8" "$OUT/f32" --dtype f32 --quiet
du -sb "$OUT/f32"/*.safetensors | awk '{s += $1} END {print s}' > "$RESULTS/f32-bytes.txt"
rm -rf "${OUT:?}"/*

echo "== summary"
python3 - "$RESULTS" "$F16" <<'EOF'
import json, os, re, sys
res, f16 = sys.argv[1], sys.argv[2]
def med(f):
    d = json.load(open(os.path.join(res, f)))
    return {r["command"]: r for r in d["results"]}
def rss(name):
    t = open(os.path.join(res, f"time-{name}.txt")).read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
i = med("inspect.json")
for k, r in i.items():
    ok = "ok" if r["median"] <= 0.010 else "MISSED"
    print(f"inspect {k:12s} median {r['median'] * 1e3:6.1f} ms  (min {r['min'] * 1e3:.1f}, max {r['max'] * 1e3:.1f}; target <= 10 ms: {ok})")
print(f"peak RSS inspect gguf {rss('inspect-gguf'):.1f} MiB, bin {rss('inspect-bin'):.1f} MiB")
c = med("convert.json")
for k, r in c.items():
    print(f"{k:20s} median {r['median']:6.2f} s  (min {r['min']:.2f}, max {r['max']:.2f})")
ratio = c["f16 (fsync)"]["median"] / c["cp+sync"]["median"]
print(f"f16 convert (fsync) / (cp + sync)   {ratio:.2f}x  (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")
print(f"f16 convert --no-fsync / cp         {c['f16 --no-fsync']['median'] / c['cp']['median']:.2f}x")
out = int(open(os.path.join(res, "f32-bytes.txt")).read())
for k in ("q8_0→f32 --no-fsync", "q8_0→f32 (fsync)", "q4_0→f32 (fsync)"):
    gbs = out / c[k]["median"] / 1e9
    print(f"{k:20s} {gbs:.2f} GB/s of f32 output ({out / 1e9:.2f} GB; target >= 1: {'ok' if gbs >= 1 else 'MISSED'})")
print(f"peak RSS convert f16 (fsync) {rss('f16'):.1f} MiB, q8_0→f32 {rss('q8_0'):.1f} MiB --no-fsync, {rss('q8_0-fsync'):.1f} MiB fsync (input {os.path.getsize(f16) / 2**20:.0f} MiB)")
EOF
