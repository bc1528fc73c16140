#!/bin/bash
# usage: attention-ab.sh ROUNDS bin...: prefill attention in us (attend_rows), run from the repository root with builds at /tmp/walsh-NAME: shipped hadamard 120-token prompt and MODELS at 4 x 1015 tokens
# models: /tmp/phdHD from `walsh init-model --out /tmp/phdHD --hidden-size 256 --layers 1 --heads 256/HD --context 1100 --attn-output dense --query dense --dtype f16`
export XDG_RUNTIME_DIR=/tmp
R=$1; shift
P=$(python3 -c "print(('ROMEO: But soft, what light through yonder window breaks? '*3)[:120])")
L=$(python3 -c "print('ROMEO: '*145)")
for r in $(seq $R); do for b in "$@"; do
  a=$(/tmp/walsh-$b --adapter vulkan profile --model models/shakespeare-hadamard --repeats 3 --prompt "$P" 2>&1 | awk '/^prefill:/{f=1} f && /attention:attend/{print $4; exit}')
  line="$b shipped $a"
  for m in ${MODELS:-phd32 phd64}; do
    x=$(/tmp/walsh-$b --adapter vulkan profile --model /tmp/$m --repeats 1 --rows 4 --prompt "$L" 2>&1 | awk '/^prefill:/{f=1} f && /attention:attend/{print $4; exit}')
    line="$line $m $x"
  done
  echo "$line"
done; done
