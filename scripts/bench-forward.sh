#!/usr/bin/env bash
# Benchmark of orient's CPU forward against PyTorch (CPU, f32, 2 threads). Not a test.
#
#   scripts/bench-forward.sh            # Qwen2-0.5B-shaped f32 model: prefill 1/128/512 tokens,
#                                        # forward-only and whole-process timings
#   scripts/bench-forward.sh --7b       # also the Qwen2-7B-shaped bf16 model (~15 GB on disk):
#                                        # 200 tokens, peak RSS, accuracy on a 2-layer truncation
#
# Env: BENCH_DIR (default /work/bench) holds the generated models; PY (default
# /work/venv-pt/bin/python) has torch + transformers + safetensors.
# FLOP/s are counted as 2 · parameters · tokens (parameters as stored, tied embedding once).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/work/bench}
PY=${PY:-/work/venv-pt/bin/python}
RUN_7B=0
[[ "${1:-}" == "--7b" ]] && RUN_7B=1
mkdir -p "$BENCH_DIR"

cargo build --release -p orient >/dev/null
ORIENT=$PWD/target/release/orient

# ---------------------------------------------------------------------------------------------
# Models. `orient synth` is meant to write these; it is not implemented yet, so a small Python
# script writes the same shapes (HF layout, safetensors). Replace it with synth when it lands.
synth_05b() {
  local out=$BENCH_DIR/qwen2-0.5b-f32
  [[ -f $out/model.safetensors ]] && return
  "$PY" - "$out" <<'PYEOF'
import sys, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                  use_sliding_window=False)
torch.manual_seed(0)
m = Qwen2ForCausalLM(cfg).to(torch.float32).eval()
m.save_pretrained(sys.argv[1], max_shard_size="100GB")
print("wrote", sys.argv[1])
PYEOF
}

prompt() { # N → comma-separated deterministic ids < 151936
  "$PY" -c "import sys; n=int(sys.argv[1]); print(','.join(str((i*7919+13)%151936) for i in range(n)))" "$1"
}

echo "== Qwen2-0.5B-shaped f32 (hidden 896, 24 layers, 14 heads, 2 KV, I 4864, V 151936, tied)"
synth_05b
M05=$BENCH_DIR/qwen2-0.5b-f32
cat /dev/null > "$BENCH_DIR/orient-05b.txt"
for T in 1 128 512; do
  echo "-- orient, $T tokens (forward only, model loaded; 1 warm-up + 3 timed)"
  "$ORIENT" run "$M05" --tokens "$(prompt $T)" --repeat 4 --keep-pages 2>&1 >/dev/null | tail -n 4 | tee -a "$BENCH_DIR/orient-05b.txt"
done

echo "-- PyTorch $("$PY" -c 'import torch; print(torch.__version__)'), f32, torch.set_num_threads(2), best of 3 (model loaded)"
"$PY" - "$M05" <<'PYEOF'
import sys, time, torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(2)
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager").eval()
params = sum(p.numel() for p in m.parameters())
for T in (1, 128, 512):
    ids = torch.tensor([[(i * 7919 + 13) % 151936 for i in range(T)]])
    best = 1e9
    with torch.no_grad():
        m(input_ids=ids, use_cache=False)  # warm-up
        for _ in range(3):
            t0 = time.perf_counter(); m(input_ids=ids, use_cache=False); best = min(best, time.perf_counter() - t0)
    print(f"pytorch tokens {T} best {best:.4f} s ({2*params*T/best/1e9:.1f} GFLOP/s)")
PYEOF

echo "-- whole process, 128 tokens: orient run vs a Python transformers script printing the same logits"
P128=$(prompt 128)
cat > "$BENCH_DIR/run_pt.py" <<PYEOF
import sys, torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(2)
m = AutoModelForCausalLM.from_pretrained("$M05", dtype=torch.float32, attn_implementation="eager").eval()
ids = torch.tensor([[int(x) for x in "$P128".split(",")]])
with torch.no_grad():
    logits = m(input_ids=ids, use_cache=False).logits[0, -1]
v, i = logits.topk(5)
for a, b in zip(i.tolist(), v.tolist()): print(a, f"{b:.6f}")
PYEOF
hyperfine --warmup 1 --runs 3 \
  -n orient "$ORIENT run $M05 --tokens $P128" \
  -n transformers "$PY $BENCH_DIR/run_pt.py"

[[ $RUN_7B == 1 ]] || exit 0

# ---------------------------------------------------------------------------------------------
echo "== Qwen2-7B-shaped bf16 (hidden 3584, 28 layers, 28 heads, 4 KV, I 18944, V 152064, untied)"
M7=$BENCH_DIR/qwen2-7b-bf16
if [[ ! -f $M7/model.safetensors.index.json ]]; then
  df -h "$BENCH_DIR"
  "$PY" - "$M7" <<'PYEOF'
# One shard per layer (+ embedding, + head) so that a 2-layer truncation can reuse the shards.
import json, os, sys, torch
from safetensors.torch import save_file
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
H, I, L, NH, NKV, V, D = 3584, 18944, 28, 28, 4, 152064, 128
cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": H, "intermediate_size": I,
       "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV, "vocab_size": V,
       "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
       "tie_word_embeddings": False, "use_sliding_window": False, "torch_dtype": "bfloat16"}
g = torch.Generator().manual_seed(0)
def rnd(*shape, std=0.02): return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)
def ones(n): return (1.0 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)
weight_map = {}
def shard(name, tensors):
    save_file(tensors, os.path.join(out, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in tensors})
    print("wrote", name, flush=True)
shard("embed.safetensors", {"model.embed_tokens.weight": rnd(V, H)})
shard("head.safetensors", {"lm_head.weight": rnd(V, H), "model.norm.weight": ones(H)})
for i in range(L):
    p = f"model.layers.{i}."
    shard(f"layer-{i:02d}.safetensors", {
        p + "input_layernorm.weight": ones(H), p + "post_attention_layernorm.weight": ones(H),
        p + "self_attn.q_proj.weight": rnd(NH * D, H), p + "self_attn.q_proj.bias": rnd(NH * D),
        p + "self_attn.k_proj.weight": rnd(NKV * D, H), p + "self_attn.k_proj.bias": rnd(NKV * D),
        p + "self_attn.v_proj.weight": rnd(NKV * D, H), p + "self_attn.v_proj.bias": rnd(NKV * D),
        p + "self_attn.o_proj.weight": rnd(H, NH * D),
        p + "mlp.gate_proj.weight": rnd(I, H), p + "mlp.up_proj.weight": rnd(I, H), p + "mlp.down_proj.weight": rnd(H, I)})
json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=1)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
# the 2-layer truncation, for the accuracy check (hard links to the same shard files: orient
# refuses symlinks that lead out of a model folder)
t = out + "-2layers"; os.makedirs(t, exist_ok=True)
keep = {k: v for k, v in weight_map.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < 2}
for f in set(keep.values()):
    if not os.path.exists(os.path.join(t, f)): os.link(os.path.join(out, f), os.path.join(t, f))
json.dump({"metadata": {}, "weight_map": keep}, open(os.path.join(t, "model.safetensors.index.json"), "w"), indent=1)
json.dump(dict(cfg, num_hidden_layers=2), open(os.path.join(t, "config.json"), "w"), indent=1)
PYEOF
fi
P200=$(prompt 200)
echo "-- orient run, 200 tokens, whole process (/usr/bin/time: wall, CPU time, peak RSS)"
/usr/bin/time -f "wall %e s, user %U s, sys %S s, peak RSS %M KiB" "$ORIENT" run "$M7" --tokens "$P200" --repeat 1
echo "-- accuracy: 2-layer truncation, orient (bf16 widened per matrix) vs transformers f32 on the upcast weights"
"$PY" - "$M7-2layers" "$P200" <<'PYEOF'
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
torch.set_num_threads(2)
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager").eval()
ids = torch.tensor([[int(x) for x in sys.argv[2].split(",")]])
with torch.no_grad():
    out = m(input_ids=ids, output_hidden_states=True, use_cache=False)
t = {"input_ids": ids[0].contiguous(), "logits": out.logits[0].float().contiguous()}
for i, h in enumerate(out.hidden_states): t[f"hidden_states.{i}"] = h[0].float().contiguous()
save_file(t, sys.argv[1] + "/reference.safetensors")
PYEOF
"$ORIENT" verify "$M7-2layers" --reference "$M7-2layers/reference.safetensors" || true
