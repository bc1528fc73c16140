#!/bin/bash
# usage: generate-prefill-ab.sh (from the repository root, builds at /tmp/walsh-NAME; rounds to /tmp/pf-ab.out) ROUNDS bin...: prefill tok/s of a 120-token prompt (generate --json), models dense/hadamard, tuned and W_T
export XDG_RUNTIME_DIR=/tmp
R=$1; shift
P=$(python3 -c "print(('ROMEO: But soft, what light through yonder window breaks? '*3)[:120])")
for r in $(seq $R); do for b in "$@"; do for m in dense hadamard; do for t in tuned gemv_cols; do
  env $( [ $t = gemv_cols ] && echo WALSH_TUNE=gemv_cols ) /tmp/walsh-$b --adapter vulkan generate --model models/shakespeare-$m --prompt "$P" --max-tokens 8 --temperature 0 --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin)['stats']; print('$b $m $t %.1f' % d['prefill_tokens_per_s'])"
done; done; done; done > /tmp/pf-ab.out
python3 - <<'P'
import collections, statistics as st
d=collections.defaultdict(list)
for l in open('/tmp/pf-ab.out'):
    b,m,t,v=l.split(); d[(m,t,b)].append(float(v))
for k in sorted(d): print(k, 'median %.1f' % st.median(d[k]), sorted(d[k]))
P
