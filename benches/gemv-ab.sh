#!/usr/bin/env bash
# Before/after decode on a real GPU, side by side in one run: two release binaries (OLD,
# NEW) decode the same random Hadamard models (d_model BIG_D, BIG_LAYERS layers, f16 and
# q4 weights), alternating, ROUNDS times each; NEW's greedy tokens of the shipped models
# are checked against the CPU first. From the project root; writes $OUT/summary.txt.
#   OLD=path/to/walsh-before NEW=target/release/walsh OUT=dir bash benches/gemv-ab.sh
set -u
OUT=${OUT:-gemv-ab}
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
OLD=${OLD:?the binary before}
NEW=${NEW:-./target/release/walsh}
ADAPTER=${ADAPTER:-vulkan}
TMP=$(mktemp -d)
log() { echo "$*" | tee -a "$OUT/summary.txt"; }
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))'"$2"')' "$1" 2>/dev/null; }

$NEW adapters > "$OUT/adapters.txt" 2>&1
log "$(cat "$OUT/adapters.txt")"
for model in models/shakespeare-hadamard models/shakespeare-hadamard-q4; do
  $NEW generate --model "$model" --device cpu --json --max-tokens 64 --temperature 0 > "$TMP/cpu.json" 2>/dev/null
  $NEW --adapter "$ADAPTER" generate --model "$model" --json --max-tokens 64 --temperature 0 \
    > "$TMP/gpu.json" 2> "$OUT/parity.err"
  if [ "$(field "$TMP/cpu.json" '["tokens"]')" = "$(field "$TMP/gpu.json" '["tokens"]')" ]; then
    log "parity $model: NEW on $ADAPTER greedy = cpu"
  else
    log "parity $model: NEW on $ADAPTER greedy DIFFERS from cpu ($(tail -1 "$OUT/parity.err"))"
  fi
done
for q in ${FORMATS:-f16 q4}; do
  $NEW init-model --out "$TMP/big-$q" --hidden-size "${BIG_D:-4096}" --layers "${BIG_LAYERS:-2}" \
    --heads 32 --context 512 --attn-output hadamard --dtype "$q" > /dev/null
  for round in $(seq "${ROUNDS:-2}"); do
    for build in OLD NEW; do
      bin=${!build}
      $bin --adapter "$ADAPTER" generate --model "$TMP/big-$q" --json --max-tokens 256 \
        --temperature 0 --prompt "The" > "$TMP/r.json" 2> "$OUT/big.err" \
        || { log "$q $build round $round: failed ($(tail -1 "$OUT/big.err"))"; continue; }
      field "$TMP/r.json" '["tokens"]' > "$TMP/tokens-$q-$build"
      same=$(cmp -s "$TMP/tokens-$q-OLD" "$TMP/tokens-$q-$build" && echo "greedy = OLD's" || echo "greedy DIFFERS from OLD's")
      log "$q $build round $round: decode $(field "$TMP/r.json" '["stats"]["decode_tokens_per_s"]') tok/s, $same"
    done
  done
done
