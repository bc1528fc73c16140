#!/bin/bash
# usage: att-ab.sh ROUNDS bin...: prefill attention ms (attend_rows), shipped hadamard 120-token prompt and MODELS at 4 x 1015 tokens
export XDG_RUNTIME_DIR=/tmp
R=$1; shift
P=$(python3 -c "print(('ROMEO: But soft, what light through yonder window breaks? '*3)[:120])")
L=$(python3 -c "print('ROMEO: '*145)")
for r in $(seq $R); do for b in "$@"; do
  a=$(/tmp/walsh-$b --adapter vulkan profile --model /work/main/models/shakespeare-hadamard --repeats 3 --prompt "$P" 2>&1 | awk '/^prefill:/{f=1} f && /attention:attend/{print $4; exit}')
  line="$b shipped $a"
  for m in ${MODELS:-phd32 phd64}; do
    x=$(/tmp/walsh-$b --adapter vulkan profile --model /tmp/$m --repeats 1 --rows 4 --prompt "$L" 2>&1 | awk '/^prefill:/{f=1} f && /attention:attend/{print $4; exit}')
    line="$line $m $x"
  done
  echo "$line"
done; done
