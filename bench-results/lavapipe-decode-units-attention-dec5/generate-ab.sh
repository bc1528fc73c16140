#!/bin/bash
# usage: gen-ab.sh ROUNDS MODEL BIN... ; prints decode tok/s per bin per round
export XDG_RUNTIME_DIR=/tmp
rounds=$1; model=$2; shift 2
for r in $(seq $rounds); do
  for b in "$@"; do
    t=$(WALSH_TUNE_CACHE=/tmp/t-$(basename $b).json $b --adapter vulkan generate --model $model --max-tokens ${TOKENS:-120} --temperature 0 --json 2>/dev/null | head -1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["stats"]["decode_tokens_per_s"],1))')
    echo "$r $(basename $b) $t"
  done
done
