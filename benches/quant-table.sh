#!/usr/bin/env bash
# The quantization table of docs/quantization.md: every shipped model x weight format (f16, q8, q4) x KV
# cache format (f16, q8, q8r, q4, q4r). From the project root after `cargo build
# --release`; takes about an hour on a 2-core machine (60 whole-slice CPU evals, 180 short
# lavapipe decodes). Prints the markdown table; intermediate results go to $WORK.
#   held-out:  walsh eval --device cpu --kv-cache KV --text models/shakespeare-heldout.txt
#   bytes read per decoded token: `walsh generate --json`'s bytes_read_per_token
#   decode tok/s: walsh --adapter ${ADAPTER:-vulkan} generate --max-tokens 128
#                 --temperature 0 --kv-cache KV, the median of 3 runs
set -eu
W=${WALSH:-./target/release/walsh}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
models="hadamard dense hadamard-qid hadamard-qmlp"
for m in $models; do
  ln -sfn "$PWD/models/shakespeare-$m" "$WORK/$m-f16"
  for w in q8 q4; do
    [ -d "$WORK/$m-$w" ] || $W quantize --model "models/shakespeare-$m" --out "$WORK/$m-$w" \
      --weights $w > /dev/null
  done
done
for m in $models; do for w in f16 q8 q4; do for kv in f16 q8 q8r q4 q4r; do
  e=$WORK/eval-$m-$w-$kv.json
  [ -s "$e" ] || $W eval --model "$WORK/$m-$w" --text models/shakespeare-heldout.txt \
    --device cpu --kv-cache $kv --json > "$e" 2> /dev/null
  s=$WORK/speed-$m-$w-$kv.txt
  if [ ! -s "$s" ]; then
    for i in 1 2 3; do
      $W --adapter "${ADAPTER:-vulkan}" generate --model "$WORK/$m-$w" --kv-cache $kv \
        --max-tokens 128 --temperature 0 --json 2> /dev/null
    done > "$s"
  fi
done; done; done
python3 - "$WORK" $models <<'EOF'
import json, os, statistics, sys
work, models = sys.argv[1], sys.argv[2:]
names = {"q8r": "q8 + rotation", "q4r": "q4 + rotation"}
print("| model | weights | KV cache | held-out nats/byte | vs f16 / f16 | file MB "
      "| bytes read / token | lavapipe tok/s |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for m in models:
    base = None
    for w in ("f16", "q8", "q4"):
        size = os.path.getsize(f"{work}/{m}-{w}/model.safetensors") / 1e6
        for kv in ("f16", "q8", "q8r", "q4", "q4r"):
            nats = json.load(open(f"{work}/eval-{m}-{w}-{kv}.json"))["nats_per_byte"]
            runs = [json.loads(l) for l in open(f"{work}/speed-{m}-{w}-{kv}.txt") if l.strip()]
            tps = statistics.median(r["stats"]["decode_tokens_per_s"] for r in runs)
            read = runs[0]["bytes_read_per_token"] / 1e6
            delta = "" if base is None else f"{nats - base:+.5f}"
            base = nats if base is None else base
            print(f"| `shakespeare-{m}` | {w} | {names.get(kv, kv)} | {nats:.5f} | {delta} "
                  f"| {size:.2f} | {read:.2f} MB | {tps:.0f} |")
EOF
