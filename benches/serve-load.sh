#!/usr/bin/env bash
# Aggregate decode rate of `walsh serve --model` under 1, 4, 16 and 32 concurrent clients
# (or the counts given), each asking for one greedy completion of TOKENS tokens; then the
# same for a second model, so Hadamard and dense W_O compare under load on one adapter.
#
#   benches/serve-load.sh                          # release build, the default adapter
#   WALSH_ADAPTER=vulkan benches/serve-load.sh 1 4 16 32
#   MODELS="models/shakespeare-hadamard models/shakespeare-dense" TOKENS=96 benches/serve-load.sh
#
# Prints one line per (model, clients): completion tokens over the wall time from the
# first request sent to the last answer, and the ratio to one client; then, per count, the
# first model's rate against the second's (the Hadamard gain with the default MODELS).
# The server runs with --max-batch MAX_BATCH (default 32). Needs curl and bc. WALSH names a
# release binary to use instead of building one (a machine without cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-1 4 16 32}")
read -r -a counts <<<"${counts[*]}"
tokens=${TOKENS:-96}
max_batch=${MAX_BATCH:-32}
declare -A rates
models=${MODELS:-"models/shakespeare-hadamard models/shakespeare-dense"}
if [ -z "${WALSH:-}" ]; then
    cargo build --release --quiet
fi
walsh=${WALSH:-target/release/walsh}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

for model in $models; do
    out=$(mktemp)
    "$walsh" serve --port 0 --model "$model" --max-batch "$max_batch" >"$out" 2>/dev/null &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    for _ in $(seq 100); do grep -q serving "$out" && break; sleep 0.1; done
    port=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$out" | head -1)
    [ -n "$port" ] || { echo "serve-load: the server did not start" >&2; exit 1; }
    ask() { # $1: client number
        curl -s "http://127.0.0.1:$port/v1/completions" \
            -d "{\"prompt\": \"ROMEO $1.\", \"max_tokens\": $tokens, \"temperature\": 0}" |
            sed -n 's/.*"completion_tokens":\([0-9]*\).*/\1/p'
    }
    ask 0 >/dev/null # warm up: pipelines, tuning
    one=
    for n in "${counts[@]}"; do
        start=$(date +%s.%N)
        counts_dir=$(mktemp -d)
        pids=()
        for i in $(seq "$n"); do
            ask "$i" >"$counts_dir/$i" &
            pids+=($!)
        done
        wait "${pids[@]}"
        total=$(awk '{s += $1} END {print s + 0}' "$counts_dir"/*)
        rm -rf "$counts_dir"
        rate=$(echo "$total / ($(date +%s.%N) - $start)" | bc -l)
        one=${one:-$rate}
        rates[$model,$n]=$rate
        printf '%-32s %3d clients: %6d tokens, %8.1f tok/s in all (%.2fx one client)\n' \
            "$model" "$n" "$total" "$rate" "$(echo "$rate / $one" | bc -l)"
    done
    kill $server
    wait $server 2>/dev/null || true
    rm -f "$out"
done

read -r -a listed <<<"$models"
if [ "${#listed[@]}" -ge 2 ]; then
    for n in "${counts[@]}"; do
        a=${rates[${listed[0]},$n]} b=${rates[${listed[1]},$n]}
        printf '%3d clients: %s %.1f tok/s, %s %.1f tok/s: %+.1f%%\n' "$n" \
            "$(basename "${listed[0]}")" "$a" "$(basename "${listed[1]}")" "$b" \
            "$(echo "($a / $b - 1) * 100" | bc -l)"
    done
fi
