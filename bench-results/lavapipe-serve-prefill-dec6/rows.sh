#!/bin/bash
# usage: rows.sh BIN: prefill attention of the shipped Hadamard model by prompt length,
# with the short-step threshold at 0 (attend_rows always) and 1000 (decode tile always).
# BIN is an experiment build whose AttnTile::prefill_on read the threshold from
# WALSH_SHORT (not kept: the server's choice is Attention::set_many_runs).
export XDG_RUNTIME_DIR=/tmp
P="ROMEO: But soft, what light through yonder window breaks? "
for round in 1 2; do for n in 8 16 32 64 120; do
  pr=$(python3 -c "print(('$P'*3)[:$n],end='')")
  for s in 0 1000; do
    echo -n "round $round, $n rows, WALSH_SHORT=$s: "
    WALSH_SHORT=$s $1 --adapter vulkan profile --model /work/main/models/shakespeare-hadamard --repeats 5 --prompt "$pr" 2>/dev/null \
      | sed -n '/^prefill:/,$p' | grep -E "^prefill:|attention:attend" | tr -s ' ' | tr '\n' ' '
    echo
  done
done; done
