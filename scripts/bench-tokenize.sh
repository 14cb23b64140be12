#!/usr/bin/env bash
# Tokenizing a ~100 KB text: orient's tokenizer (the Rust `tokenizers` crate with the pure-Rust
# fancy-regex backend) against the Python `tokenizers` package (Rust core with Oniguruma), side by
# side, on the same tokenizer.json files. Not part of `cargo test`.
#
#   scripts/bench-tokenize.sh [PYTHON] [REPEATS]
#
# PYTHON defaults to /work/venv-pt/bin/python (tokenizers 0.23.3, tests/fixtures/requirements-pt.txt).
# Both sides encode with special tokens, single-threaded (one text), after one warm-up; medians.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-/work/venv-pt/bin/python}
REPEATS=${2:-30}
TEXT=tests/fixtures/tokenizers/long.txt

cargo build --release --quiet --example tokenize
BIN=target/release/examples/tokenize

for TOK in tests/fixtures/qwen2/tokenizer.json tests/fixtures/tokenizers/wordpiece/tokenizer.json; do
    echo "== $TOK on $TEXT"
    RAYON_NUM_THREADS=1 "$BIN" "$TOK" "$TEXT" "$REPEATS"
    RAYON_RS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$PY" - "$TOK" "$TEXT" "$REPEATS" <<'PYEOF'
import statistics, sys, time
import tokenizers
tok = tokenizers.Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
n = int(sys.argv[3])
ids = tok.encode(text).ids  # warm-up
times = []
for _ in range(n):
    t0 = time.perf_counter()
    out = tok.encode(text)
    times.append(time.perf_counter() - t0)
    assert len(out.ids) == len(ids)
times.sort()
nbytes = len(text.encode("utf-8"))
med = times[len(times) // 2]
print(f"python tokenizers {tokenizers.__version__} (Oniguruma): {nbytes} bytes -> {len(ids)} ids; "
      f"median {med*1e3:.2f} ms, best {times[0]*1e3:.2f} ms, mean {statistics.mean(times)*1e3:.2f} ms "
      f"({nbytes/med/1e6:.1f} MB/s)")
PYEOF
done
