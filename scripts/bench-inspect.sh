#!/usr/bin/env bash
# Benchmark: `orient inspect` on a Qwen2-7B-shaped, 4-shard bf16 set (339 tensors, with
# config.json and model.safetensors.index.json), against Python's safetensors.safe_open
# listing names, dtypes and shapes of the same shards (framework="numpy", the fair
# comparison, and framework="pt", which also pays for importing torch). The data is a sparse file (holes):
# neither tool should read it. Not a test: run by hand, on a quiet machine.
#
#   scripts/bench-inspect.sh [PYTHON]      # PYTHON: an interpreter with safetensors+torch
#
# Needs hyperfine. Prints hyperfine's table and the ratio of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-/work/venv-pt/bin/python}}
command -v hyperfine >/dev/null || { echo "hyperfine is required (apt-get install hyperfine)" >&2; exit 2; }

cargo build --release --quiet
BIN=$PWD/target/release/orient
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

# Writes headers with correct offsets, then extends each file to its full length
# without writing data (a sparse file), so the set is ~15 GB logically, ~0 on disk.
python3 - "$DIR" <<'PY'
import json, os, struct, sys
d = sys.argv[1]
H, L, NH, NKV, I, V = 3584, 28, 28, 4, 18944, 152064
D = H // NH
tensors = [("model.embed_tokens.weight", [V, H])]
for i in range(L):
    p = f"model.layers.{i}."
    tensors += [
        (p + "input_layernorm.weight", [H]),
        (p + "self_attn.q_proj.weight", [NH * D, H]), (p + "self_attn.q_proj.bias", [NH * D]),
        (p + "self_attn.k_proj.weight", [NKV * D, H]), (p + "self_attn.k_proj.bias", [NKV * D]),
        (p + "self_attn.v_proj.weight", [NKV * D, H]), (p + "self_attn.v_proj.bias", [NKV * D]),
        (p + "self_attn.o_proj.weight", [H, NH * D]),
        (p + "post_attention_layernorm.weight", [H]),
        (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
        (p + "mlp.down_proj.weight", [H, I]),
    ]
tensors += [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]
shards = [tensors[k::4] for k in range(4)]
weight_map, total = {}, 0
for k, group in enumerate(shards):
    name = f"model-{k + 1:05d}-of-00004.safetensors"
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for t, shape in group:
        n = 2
        for s in shape:
            n *= s
        header[t] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
        weight_map[t] = name
    total += off
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(d, name), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        f.truncate(8 + len(hb) + off)
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(os.path.join(d, "model.safetensors.index.json"), "w"))
json.dump({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH,
           "num_key_value_heads": NKV, "vocab_size": V, "max_position_embeddings": 32768,
           "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16"}, open(os.path.join(d, "config.json"), "w"))
print(f"{len(tensors)} tensors, {total / 1e9:.1f} GB logical, in {d}")
PY
du -sh "$DIR"

cat > "$DIR/list.py" <<'PY'
import json, sys
from safetensors import safe_open
d, fw = sys.argv[1], sys.argv[2]
idx = json.load(open(d + "/model.safetensors.index.json"))
for shard in sorted(set(idx["weight_map"].values())):
    with safe_open(d + "/" + shard, framework=fw) as f:
        for k in f.keys():
            s = f.get_slice(k)
            print(k, s.get_dtype(), s.get_shape())
PY

"$BIN" inspect "$DIR" --group-layers | tail -12
hyperfine -N --warmup 5 --runs 50 --export-json "$DIR/h.json" \
  -n orient "$BIN inspect $DIR" \
  -n orient-json "$BIN inspect --json $DIR" \
  -n python-safe_open "$PY $DIR/list.py $DIR numpy" \
  -n python-safe_open-pt "$PY $DIR/list.py $DIR pt"
python3 - "$DIR/h.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
o, p = r["orient"]["median"], r["python-safe_open"]["median"]
print(f"orient inspect median {o * 1e3:.2f} ms; python safe_open median {p * 1e3:.1f} ms; ratio {p / o:.1f}x")
PY
