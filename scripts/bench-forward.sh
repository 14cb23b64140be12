#!/usr/bin/env bash
# Benchmark of orient's CPU forward against PyTorch (CPU, f32, 2 threads). Not a test.
#
#   scripts/bench-forward.sh            # Qwen2-0.5B-shaped f32 model: prefill 1/128/512 tokens,
#                                        # forward-only and whole-process timings
#   scripts/bench-forward.sh --7b       # also the Qwen2-7B-shaped bf16 model (~15 GB on disk):
#                                        # 200 tokens, peak RSS, accuracy on a 2-layer model of
#                                        # the same shapes against transformers f32
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
# Models come from `orient synth` (random weights, HF layout) and a config.json written here.
synth() { # CONFIG_JSON OUT DTYPE
  [[ -e $2 ]] && return
  local cfg; cfg=$(mktemp -d)
  printf '%s\n' "$1" > "$cfg/config.json"
  "$ORIENT" synth "$cfg" "$2" --dtype "$3" --no-fsync --quiet
  rm -r "$cfg"
}
QWEN2_05B='{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
 "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
 "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
 "hidden_act": "silu", "tie_word_embeddings": true, "use_sliding_window": false, "torch_dtype": "float32"}'
qwen2_7b() { # LAYERS
  printf '{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
 "intermediate_size": 18944, "num_hidden_layers": %d, "num_attention_heads": 28, "num_key_value_heads": 4,
 "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
 "hidden_act": "silu", "tie_word_embeddings": false, "use_sliding_window": false, "torch_dtype": "bfloat16"}' "$1"
}

prompt() { # N → comma-separated deterministic ids < 151936
  "$PY" -c "import sys; n=int(sys.argv[1]); print(','.join(str((i*7919+13)%151936) for i in range(n)))" "$1"
}

echo "== Qwen2-0.5B-shaped f32 (hidden 896, 24 layers, 14 heads, 2 KV, I 4864, V 151936, tied)"
M05=$BENCH_DIR/qwen2-0.5b-f32
synth "$QWEN2_05B" "$M05" f32

for T in 1 128 512; do
  echo "-- orient, $T tokens (forward only, model loaded; 1 warm-up + 3 timed)"
  "$ORIENT" run "$M05" --tokens "$(prompt $T)" --repeat 4 --keep-pages 2>&1 >/dev/null | tail -n 4
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
df -h "$BENCH_DIR" | tail -n 1
synth "$(qwen2_7b 28)" "$M7" bf16
# a 2-layer model of the same shapes, small enough for transformers in f32 (accuracy check)
synth "$(qwen2_7b 2)" "$M7-2layers" bf16
P200=$(prompt 200)
echo "-- orient run, 200 tokens, whole process (/usr/bin/time: wall, CPU time, peak RSS)"
/usr/bin/time -f "wall %e s, user %U s, sys %S s, peak RSS %M KiB" "$ORIENT" run "$M7" --tokens "$P200" --repeat 1
echo "-- accuracy: 2-layer model of the same shapes, orient (AMX tiles where the CPU has them, else bf16 widened; ORIENT_KERNELS=portable forces the latter) vs transformers f32 on the upcast weights"
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
save_file(t, sys.argv[1] + ".reference.safetensors")
PYEOF
"$ORIENT" verify "$M7-2layers" --reference "$M7-2layers.reference.safetensors" || true
