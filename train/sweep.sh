#!/usr/bin/env bash
# The seed sweep behind docs/seeds.md's variant table: the four attention variants
# (output projection x query) at the shipped size and budget, seeds 1-3, three runs side by
# side (one thread each, at low priority so builds and tests on the same machine go first).
#
#   train/sweep.sh            start or continue every run that has not reached its last step
#   train/sweep.sh --list     print the runs and their state, start nothing
#
# Seed 1 of each variant is the shipped model (models/shakespeare-*); seeds 2 and 3 go to
# train/runs/<variant>-seed<N>/ (their logs are committed, their weights git-ignored).
# A run stopped half-way (killed, machine restarted) continues bit for bit with --resume.
# Needs train/data/ (train/fetch_data.sh) and the release trainer:
#   cargo build --release -p walsh-train
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
readonly STEPS=1500
readonly PARALLEL=3
trainer="$root/target/release/walsh-train"

# name attn_output query
variants=(
    "dense dense dense"
    "hadamard hadamard dense"
    "hadamard-qid hadamard identity"
    "hadamard-qmlp hadamard residual-mlp"
)

out_dir() { # name seed
    if [[ $2 == 1 ]]; then echo "models/shakespeare-$1"; else echo "train/runs/$1-seed$2"; fi
}

last_step() { # dir
    [[ -f $1/train_log.csv ]] && tail -n 1 "$1/train_log.csv" | cut -d, -f1 | grep -E '^[0-9]+$' || echo 0
}

jobs=()
for seed in 1 2 3; do
    for v in "${variants[@]}"; do
        read -r name attn query <<<"$v"
        dir=$(out_dir "$name" "$seed")
        step=$(last_step "$dir")
        if [[ ${1:-} == --list ]]; then
            printf '%-40s step %5s / %s\n' "$dir" "$step" "$STEPS"
        elif (( step < STEPS )); then
            jobs+=("$dir $attn $query $seed")
        fi
    done
done
[[ ${1:-} == --list ]] && exit 0
(( ${#jobs[@]} )) || { echo "every run has reached step $STEPS"; exit 0; }
[[ -x $trainer ]] || { echo "error: $trainer missing: cargo build --release -p walsh-train" >&2; exit 1; }
[[ -f train/data/train.txt ]] || { echo "error: train/data/ missing: train/fetch_data.sh" >&2; exit 1; }

run_one() { # dir attn query seed
    local dir=$1 attn=$2 query=$3 seed=$4 resume=()
    [[ -f $dir/checkpoint/state.safetensors ]] && resume=(--resume)
    mkdir -p "$dir"
    echo "start $dir (seed $seed${resume:+, resumed})"
    RAYON_NUM_THREADS=1 nice -n 19 "$trainer" --out "$dir" --attn-output "$attn" --query "$query" \
        --steps "$STEPS" --seed "$seed" "${resume[@]}" >"$dir/train.out" 2>&1
    echo "done  $dir: $(tail -n 1 "$dir/train_log.csv")"
}
export -f run_one
export trainer STEPS
printf '%s\n' "${jobs[@]}" | xargs -P "$PARALLEL" -L 1 bash -c 'run_one "$@"' _
