#!/usr/bin/env bash
# Scores model directories on the whole held-out slice (models/shakespeare-heldout.txt,
# 65,502 bytes) twice: walsh's CPU decoder with an f32 KV cache (`walsh eval --device cpu`)
# and the trainer's own forward pass (`walsh-train eval`). Writes DIR/heldout_full.json,
# which `walsh-train report` reads:
#   {"text": ..., "kv_cache": "f32", "walsh": <walsh eval --json>, "trainer": <walsh-train eval --json>}
#
#   train/heldout.sh DIR...          e.g. train/heldout.sh models/shakespeare-hadamard-qmlp
#
# The walsh CPU eval is single-threaded and takes minutes per model on a quiet machine.
# Needs the release binaries: cargo build --release --bin walsh -p walsh -p walsh-train
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
text=models/shakespeare-heldout.txt
walsh="$root/target/release/walsh"
trainer="$root/target/release/walsh-train"
(( $# )) || { echo "usage: train/heldout.sh DIR..." >&2; exit 2; }
for bin in "$walsh" "$trainer"; do
    [[ -x $bin ]] || { echo "error: $bin missing: cargo build --release -p walsh -p walsh-train" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "error: jq is needed to write the JSON" >&2; exit 1; }

# Builds whose KV cache defaults to f16 take --kv-cache; older ones are always f32.
kv=()
if "$walsh" eval --help | grep -q -- --kv-cache; then kv=(--kv-cache f32); fi

for dir in "$@"; do
    dir=${dir%/}
    w=$("$walsh" eval --device cpu --model "$dir" --text "$text" --json "${kv[@]}")
    t=$(RAYON_NUM_THREADS=1 "$trainer" eval --model "$dir" --text "$text" --json)
    jq -n --arg text "$text" --arg kv f32 --argjson walsh "$w" --argjson trainer "$t" \
        '{text: $text, kv_cache: $kv, walsh: $walsh, trainer: $trainer}' >"$dir/heldout_full.json.tmp"
    mv "$dir/heldout_full.json.tmp" "$dir/heldout_full.json"
    jq -r --arg dir "$dir" \
        '"\($dir): walsh \(.walsh.nats_per_byte), trainer \(.trainer.nats_per_byte), difference \(.walsh.nats_per_byte - .trainer.nats_per_byte)"' \
        "$dir/heldout_full.json"
done
