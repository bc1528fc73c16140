#!/usr/bin/env bash
# One run on a machine with a real GPU, from the project root, after `cargo build
# --release` (or with WALSH pointing at a release binary). Writes $OUT/gpu-check.tar.gz
# holding the files below, and summary.txt, roofline.txt and adapters.txt beside it:
#   drivers.txt, adapters.txt    what the drivers and walsh see
#   parity.txt                   greedy tokens of the default model in f16, q8 and q4 weights
#                                on the CPU reference and on every adapter (must be equal)
#   roofline.txt                 decode of random d_model 4096 models (f16, q8, q4 weights)
#                                against the device's copy bandwidth (needs python3 + torch)
#   profile-*.txt/.json          `walsh profile` of the shipped dense and Hadamard models and
#                                of the f16 grid models: every dispatch of a decode step timed
#   profile-rows-*.txt           `walsh profile --rows 1,4,16,32`: how a decode step of the
#                                shipped models grows with its sequences (what serving gains)
#   serve-load.txt               benches/serve-load.sh: the completions API's aggregate tok/s
#                                under 1, 4, 16 and 32 clients, Hadamard against dense
#   tune-*.txt                   `walsh tune`: every decode GEMV timed on the shipped models'
#                                and the grid models' products, and which one the adapter chose
#   grid.txt, grid-*.json        decode of random 2-layer models at d_model GRID_D x f16/q8/q4
#                                x dense/hadamard against the copy roofline, and Hadamard
#                                against dense at each width
#   peer.txt                     llama.cpp beside walsh on the same adapter and weights
#                                (benches/peer-llamacpp.sh, when its build is in PEER_CACHE)
#   bench-kernels/, bench-decoder/, bench-paper/  the suites on the first adapter, bounded
# Used for bench-results/<device>/ (see bench-results/README.md). Every size is an
# environment variable, so the same script runs end to end on a software adapter:
#   GRID_D="256 512" BIG_D=512 PAPER_MIN_D=256 PAPER_D=512 BENCH_SECONDS=60 bash benches/gpu-check.sh
set -u
FINAL=${OUT:-gpu-out}
mkdir -p "$FINAL"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
W=${WALSH:-./target/release/walsh}
TMP=$(mktemp -d)
OUT=$TMP/out  # everything, archived into $FINAL at the end
mkdir -p "$OUT"
log() { echo "$*" | tee -a "$OUT/summary.txt"; }

{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv; } \
  > "$OUT/drivers.txt" 2>&1
$W adapters > "$OUT/adapters.txt" 2>&1
cat "$OUT/adapters.txt"
n_adapters=$(($(wc -l < "$OUT/adapters.txt") - 1))

# Greedy parity: 64 tokens of the default model and its q8/q4 quantizations.
tokens() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"])' "$1" 2>/dev/null; }
for q in ${PARITY:-f16 q8 q4}; do
  model=models/shakespeare-hadamard
  if [ "$q" != f16 ]; then
    model=$TMP/hadamard-$q
    $W quantize --model models/shakespeare-hadamard --out "$model" --weights "$q" > /dev/null
  fi
  $W generate --model "$model" --device cpu --json --max-tokens 64 --temperature 0 > "$TMP/cpu.json" 2>/dev/null
  for a in $(seq 0 $((n_adapters - 1))); do
    $W --adapter "$a" generate --model "$model" --json --max-tokens 64 --temperature 0 \
      > "$TMP/gpu.json" 2> "$OUT/gen-$q-$a.err" || { log "parity $q adapter $a: failed ($(tail -1 "$OUT/gen-$q-$a.err"))"; continue; }
    if [ "$(tokens "$TMP/cpu.json")" = "$(tokens "$TMP/gpu.json")" ]; then
      log "parity $q adapter $a: greedy = cpu"
    else
      log "parity $q adapter $a: greedy DIFFERS from cpu"
    fi
  done
done | tee "$OUT/parity.txt"

# Decode against the copy roofline: random 2-layer d_model 4096 models (BIG_D, BIG_LAYERS;
# init-model's limit follows the memory free: d_model 8192 x 2 layers needs about 20 GiB).
python3 - > "$OUT/copy-bandwidth.txt" 2>&1 <<'EOF'
import torch
n = 1 << 30  # 1 GiB
a = torch.empty(n, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(20): b.copy_(a)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"copy {n} bytes: {ms:.3f} ms, read+write {2 * n / ms / 1e6:.0f} GB/s, read {n / ms / 1e6:.0f} GB/s")
EOF
cat "$OUT/copy-bandwidth.txt"
for q in f16 q8 q4; do
  $W init-model --out "$TMP/big-$q" --hidden-size "${BIG_D:-4096}" --layers "${BIG_LAYERS:-2}" --heads 32 --context 512 \
    --attn-output hadamard --dtype "$q" > /dev/null
  for a in $(seq 0 $((n_adapters - 1))); do
    $W --adapter "$a" generate --model "$TMP/big-$q" --json --max-tokens 256 --temperature 0 \
      --prompt "The" > "$OUT/big-$q-$a.json" 2> "$OUT/big-$q-$a.err"
  done
done
python3 - "$OUT" "$n_adapters" > "$OUT/roofline.txt" 2>&1 <<'EOF'
import json, re, sys
out, n = sys.argv[1], int(sys.argv[2])
bw = open(f"{out}/copy-bandwidth.txt").read()
read_gbs = float(re.search(r"read (\d+) GB/s", bw).group(1)) if "read " in bw else float("nan")
print(f"copy roofline (bytes read per second): {read_gbs:.0f} GB/s")
print("adapter | weights | decode tok/s | weight bytes (GPU) | read GB/s at that rate | of roofline")
for a in range(n):
    for q in ("f16", "q8", "q4"):
        try:
            s = json.load(open(f"{out}/big-{q}-{a}.json"))["stats"]
        except Exception as e:
            print(f"{a} | {q} | failed: {e}"); continue
        wb = dict((c[0], c[1]) for c in s["memory"]["by_category"])["weights"]
        tps = s["decode_tokens_per_s"]
        # Each decoded token reads every layer matrix and the lm_head once (the embedding
        # table: one row): about the weight bytes.
        gbs = wb * tps / 1e9
        print(f"{s['device']} | {q} | {tps:.1f} | {wb} | {gbs:.0f} | {gbs / read_gbs:.0%}")
EOF
cat "$OUT/roofline.txt"

# Where a decode step's time goes: the shipped models, then every grid model below.
for m in dense hadamard; do
  $W --adapter 0 profile --model models/shakespeare-$m --repeats 20 > "$OUT/profile-$m.txt" 2>&1
  $W --adapter 0 profile --model models/shakespeare-$m --repeats 20 --json > "$OUT/profile-$m.json" 2>/dev/null
  log "profile $m: $(grep -E '^decode:|per layer' "$OUT/profile-$m.txt" | tr '\n' ' ')"
  $W --adapter 0 tune --model models/shakespeare-$m > "$OUT/tune-$m.txt" 2>&1
  log "tune $m: $(grep -F -- '<- chosen' "$OUT/tune-$m.txt" | tr -s ' ' | tr '\n' ';')"
done

# Serving: a decode step of 1 to 32 sequences, then `walsh serve` under 1 to 32 clients.
for m in dense hadamard; do
  $W --adapter 0 profile --model models/shakespeare-$m --rows 1,4,16,32 --repeats 10 \
    > "$OUT/profile-rows-$m.txt" 2>&1
  log "rows $m: $(grep -F 'tok/s over all rows' "$OUT/profile-rows-$m.txt" | tr -s ' ')"
done
WALSH=$W WALSH_ADAPTER=0 timeout "${SERVE_SECONDS:-150}" bash benches/serve-load.sh 1 4 16 32 \
  > "$OUT/serve-load.txt" 2>&1
tail -4 "$OUT/serve-load.txt" | tee -a "$OUT/summary.txt"

# Decode against the roofline at each width, weights and output projection: random 2-layer
# models (heads of 128), 256 greedy tokens, then Hadamard against dense per width.
for d in ${GRID_D:-1024 2048 4096}; do
  for q in f16 q8 q4; do
    for o in dense hadamard; do
      m=$TMP/grid-$d-$q-$o
      $W init-model --out "$m" --hidden-size "$d" --layers 2 --heads $((d >= 256 ? d / 128 : 2)) \
        --context 512 --attn-output "$o" --dtype "$q" > /dev/null 2> "$OUT/grid-$d-$q-$o.err" \
        || { log "grid $d $q $o: init-model failed ($(tail -1 "$OUT/grid-$d-$q-$o.err"))"; continue; }
      $W --adapter 0 generate --model "$m" --json --max-tokens 256 --temperature 0 --prompt "The" \
        2>> "$OUT/grid-$d-$q-$o.err" | head -1 > "$OUT/grid-$d-$q-$o.json"
      if [ "$q" = f16 ]; then
        $W --adapter 0 profile --model "$m" --repeats 10 > "$OUT/profile-grid-$d-$o.txt" 2>&1
      fi
      if [ "$o" = hadamard ]; then
        $W --adapter 0 tune --model "$m" --rounds 3 > "$OUT/tune-grid-$d-$q.txt" 2>&1
      fi
    done
  done
done
python3 - "$OUT" ${GRID_D:-1024 2048 4096} > "$OUT/grid.txt" 2>&1 <<'EOF'
import json, re, sys
out, widths = sys.argv[1], sys.argv[2:]
try:
    bw = open(f"{out}/copy-bandwidth.txt").read()
    read_gbs = float(re.search(r"read (\d+) GB/s", bw).group(1))
except Exception:
    read_gbs = float("nan")
print(f"copy roofline (bytes read per second): {read_gbs:.0f} GB/s")
print("d_model | weights | output | decode tok/s | dispatches/token | bytes read/token | GB/s | of roofline | hadamard/dense")
for d in widths:
    for q in ("f16", "q8", "q4"):
        tps = {}
        for o in ("dense", "hadamard"):
            try:
                j = json.load(open(f"{out}/grid-{d}-{q}-{o}.json"))
            except Exception as e:
                print(f"{d} | {q} | {o} | failed: {e}")
                continue
            s = j["stats"]
            b = j.get("bytes_read_per_token", 0.0)
            tps[o] = s["decode_tokens_per_s"]
            gbs = b * tps[o] / 1e9
            ratio = f"{tps['hadamard'] / tps['dense']:.3f}" if len(tps) == 2 else ""
            print(f"{d} | {q} | {o} | {tps[o]:.1f} | {s['dispatches_per_token']:.1f} | {b:.0f} | {gbs:.1f} | {gbs / read_gbs:.0%} | {ratio}")
EOF
cat "$OUT/grid.txt"

# llama.cpp beside walsh, when benches/peer-llamacpp.sh's build is there (build it for this
# machine first, `bash benches/peer-llamacpp.sh --build-only`, and carry PEER_CACHE).
if [ -x "${PEER_CACHE:-$HOME/.cache/walsh-peer}/build-vulkan/bin/llama-bench" ]; then
  WALSH=$W OUT_DIR=$OUT MODELS="${PEER_MODELS:-random-2048x4}" WEIGHTS="${PEER_WEIGHTS:-f16 q4_0}" \
    ROUNDS=${PEER_ROUNDS:-2} timeout "${PEER_SECONDS:-180}" bash benches/peer-llamacpp.sh > "$OUT/peer.txt" 2>&1
  tail -5 "$OUT/peer.txt"
else
  log "peer: no llama.cpp build in ${PEER_CACHE:-$HOME/.cache/walsh-peer} (skipped)"
fi

# The kernel, decoder and paper suites on the first adapter, each bounded: after
# BENCH_SECONDS a suite starts no new case and writes what it measured (the reports are
# rewritten after every case, so the timeout, for a case that hangs, keeps the rest).
# The paper grid starts at PAPER_MIN_D: its small widths are grid.txt's and the
# decoder suite's, and the time goes to the widths the paper's claims grow with.
for suite in ${SUITES:-kernels decoder paper}; do
  timeout $((${BENCH_SECONDS:-120} * 3 + 60)) $W --adapter 0 bench --suite $suite --max-context 512 \
    --seconds "${BENCH_SECONDS:-120}" --min-d-model "${PAPER_MIN_D:-1024}" \
    --max-d-model "${PAPER_D:-8192}" --out "$OUT/bench-$suite" > "$OUT/bench-$suite.log" 2>&1
  tail -2 "$OUT/bench-$suite.log"
done
# Everything in one archive, the summaries beside it.
tar czf "$FINAL/gpu-check.tar.gz" -C "$OUT" .
cp "$OUT/summary.txt" "$OUT/roofline.txt" "$OUT/adapters.txt" "$OUT/grid.txt" "$FINAL/" 2>/dev/null
ls -la "$OUT" "$FINAL"
