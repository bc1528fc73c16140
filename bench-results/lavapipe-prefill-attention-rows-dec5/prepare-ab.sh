#!/bin/bash
# usage: prepare-ab.sh ROUNDS bin...: walsh generate of the shipped Hadamard model (6- and 120-token prompts, 100 tokens), wall time and prepare_seconds; builds at /tmp/walsh-NAME, run from the repository root
export XDG_RUNTIME_DIR=/tmp
R=$1; shift
P=$(python3 -c "print(('ROMEO: But soft, what light through yonder window breaks? '*3)[:120])")
for r in $(seq $R); do for b in "$@"; do for pr in short long; do
  if [ $pr = short ]; then pp="ROMEO:"; else pp="$P"; fi
  s=$(date +%s.%N); /tmp/walsh-$b --adapter vulkan generate --model models/shakespeare-hadamard --prompt "$pp" --max-tokens 100 --temperature 0 --json 2>/dev/null > /tmp/g.json; e=$(date +%s.%N)
  echo "$b $pr wall $(python3 -c "print('%.3f' % ($e-$s))") $(python3 -c "import json; d=json.load(open('/tmp/g.json'))['stats']; print('prepare %.3f prefill %.1f ms' % (d['prepare_seconds'], d['prefill_seconds']*1e3))")"
done; done; done
