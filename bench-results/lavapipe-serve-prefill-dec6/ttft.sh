#!/bin/bash
# usage: ttft.sh BIN PORT MODEL: serve, then 12 completions of a 120-byte prompt, max_tokens 1;
# prints kernels-built time and the median / min request time of requests 3..12
B=$1; P=$2; M=${3:-models/shakespeare-hadamard}
cd /work/main
XDG_RUNTIME_DIR=/tmp $B --adapter vulkan serve --model $M --port $P > /tmp/serve-$P.log 2>&1 &
pid=$!
for i in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:$P/v1/models && break; sleep 0.1; done
PROMPT=$(python3 -c "print(('ROMEO: But soft, what light through yonder window breaks? '*3)[:120],end='')")
ts=()
for k in $(seq 12); do
  t=$(curl -s -o /dev/null -w "%{time_total}" http://127.0.0.1:$P/v1/completions -H 'content-type: application/json' -d "{\"prompt\":\"$PROMPT\",\"max_tokens\":1,\"temperature\":0}")
  ts+=($t)
done
kill $pid; wait $pid 2>/dev/null
built=$(grep -o "kernels built in [0-9.]* s" /tmp/serve-$P.log)
python3 - "$B" "$built" "${ts[@]}" <<'PY'
import sys,statistics
b,built,*t=sys.argv[1:]; t=[float(x)*1000 for x in t]
print(f"{b}: {built}; first {t[0]:.1f} ms; requests 3-12 median {statistics.median(t[2:]):.1f} min {min(t[2:]):.1f} ms")
PY
