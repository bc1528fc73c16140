#!/bin/bash
# A/B: decode step (walsh profile) base vs new, shipped models, lavapipe; 3 rounds alternating
export XDG_RUNTIME_DIR=/tmp
cd .
P=$(python3 -c "print('ROMEO: '*14)")
for r in 1 2 3; do
  for b in base new; do
    bin=/tmp/walsh-$([ $b = base ] && echo mend || echo new)
    for m in dense hadamard hadamard-q4; do
      s=$($bin --adapter vulkan profile --model models/shakespeare-$m --repeats 20 2>&1 | grep '^decode:' | sed 's/.*sum \([0-9.]*\) us, wall \([0-9.]*\) us.*/\1 \2/')
      l=$($bin --adapter vulkan profile --model models/shakespeare-$m --repeats 10 --prompt "$P" 2>&1 | grep -E '^decode:|^prefill:' | sed 's/.*sum \([0-9.]*\) us, wall \([0-9.]*\) us.*/\1 \2/' | tr '\n' ' ')
      echo "$r $b $m short(sum wall) $s | ctx99(sum wall) prefill98(sum wall) $l"
    done
  done
done
