#!/usr/bin/env bash
# walsh beside llama.cpp (not part of CI). Builds llama.cpp's Vulkan backend from the
# llama-cpp-python 0.3.36 sdist (PyPI) into a cache outside the repository, exports walsh's
# dense models as GGUF (`walsh export --gguf`), checks that llama.cpp's greedy tokens equal
# `walsh generate`'s on the same Vulkan adapter, then times decode alternately. From the
# project root:
#   bash benches/peer-llamacpp.sh [--cpu] [--build-only] [--render REPORT.json]
# Environment (defaults in brackets):
#   PEER_CACHE   [~/.cache/walsh-peer]  sdist, llama.cpp source, build
#   WALSH        [target/release/walsh] walsh binary (built if missing)
#   MODELS       [shipped random-1024x8] "shipped" = models/shakespeare-dense, "random-DxL" =
#                a random dense model from `walsh init-model` (d_model D, L layers)
#   WEIGHTS      [f16]                  any of f16 q8_0 q4_0
#   ROUNDS       [3]                    timed rounds per engine, alternating
#   ADAPTER      [vulkan]               walsh's --adapter; llama.cpp uses Vulkan device
#   VK_DEVICE    [0]                    GGML_VK_VISIBLE_DEVICES for llama.cpp
#   PROMPT       ["ROMEO:"]             prompt (6 bytes = 6 tokens; llama-bench -p matches its length)
#   GEN_TOKENS   [128]  CHECK_TOKENS [64] (both capped at the context minus the prompt)
#   LLAMA_REPS   [1]                    llama-bench -r: one repetition per round, as walsh runs once
#   OUT_DIR      [bench-results]
# --cpu also times llama.cpp's CPU backend (-ngl 0) for reference.
set -euo pipefail

LLAMA_CPP_PYTHON=0.3.36
PEER_CACHE=${PEER_CACHE:-$HOME/.cache/walsh-peer}
SRC=$PEER_CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp
BUILD=$PEER_CACHE/build-vulkan
GREEDY=$PEER_CACHE/peer-greedy

# Writes the Markdown report next to its JSON (also: --render FILE.json, to redo it).
render() {
  python3 - "$1" <<'PY'
import json, sys
path = sys.argv[1]
r = json.load(open(path))
def fmt(x):
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"
L = [f"# walsh beside llama.cpp: {r['walsh_device']}", "",
     f"walsh {r['walsh_commit']}; llama.cpp from the {r['llama_cpp']}; llama.cpp device: "
     f"{r['llama_device'] or 'n/a'}. Written by `benches/peer-llamacpp.sh`; models exported "
     f"with `walsh export --gguf`. {r['cpus']} CPUs; load average (1, 5, 15 min) "
     f"{r['load_average_start']} at the start, {r['load_average_end']} at the end (other "
     "work on the machine slows both engines; the rounds alternate so both see it).", "",
     "## Greedy check", "",
     "Greedy tokens from the same prompt, walsh on its adapter against llama.cpp "
     "(`benches/peer-greedy.cpp`: the prompt's bytes as token ids, argmax of the logits). "
     "Speed is measured only where they match.", "",
     "| model | weights | tokens | same | text (walsh) |", "|---|---|---|---|---|"]
for g in r["greedy"]:
    L.append(f"| {g['model']} | {g['weights']} | {g['tokens']} | {'yes' if g['same'] else '**no**'} | `{json.dumps(g['walsh_text'])[1:-1][:160]}` |")
    if not g["same"]:
        L.append(f"| | | | llama.cpp: | `{json.dumps(g['llama_text'])[1:-1][:160]}` |")
L += ["", "## Decode", "",
      f"Decode tok/s, {r['rounds']} rounds alternating walsh and llama.cpp; walsh: "
      "`decode_tokens_per_s` of `walsh generate --json` (after the prompt); llama.cpp: "
      f"`avg_ts` of llama-bench's tg test ({r['llama_bench_repetitions']} repetition(s) after "
      "its one-token warm-up; its prompt test runs separately, so it decodes from an empty "
      "cache).", "",
      "| model | weights | tokens | engine | rounds (tok/s) | median | walsh / llama.cpp |",
      "|---|---|---|---|---|---|---|"]
names = {"walsh": "walsh", "llama": "llama.cpp Vulkan", "llama-cpu": "llama.cpp CPU"}
for s in r["decode"]:
    for e, v in s["rounds"].items():
        ratio = f"{s['walsh_over_llama']:.2f}x" if e == "walsh" and s["walsh_over_llama"] else ""
        L.append(f"| {s['model']} | {s['weights']} | {s['tokens']} | {names[e]} | "
                 f"{', '.join(fmt(x) for x in v)} | {fmt(s['median_tok_s'][e])} | {ratio} |")
L += ["", "## Commands", "", "`$TMP` is the run's temporary directory.", "", "```", "# prepare"]
L += r["prepare"] + ["# greedy check"]
L += [c for g in r["greedy"] for c in (g["walsh_cmd"], g["llama_cmd"])] + ["# timed, alternating"]
L += [c for s in r["decode"] for c in s["commands"].values()]
L += ["```", ""]
md = path[: -len(".json")] + ".md"
open(md, "w").write("\n".join(L))
print(f"wrote {md} and {path}")
PY
}

WITH_CPU=0
BUILD_ONLY=0
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) WITH_CPU=1 ;;
    --build-only) BUILD_ONLY=1 ;;
    --render) render "$2"; exit ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

need_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" > /dev/null
  fi
}

build_llamacpp() {
  need_apt cmake glslc libvulkan-dev spirv-headers g++ mesa-vulkan-drivers libvulkan1
  mkdir -p "$PEER_CACHE"
  if [ ! -d "$SRC" ]; then
    pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON" \
      -d "$PEER_CACHE/sdist"
    tar -xzf "$PEER_CACHE/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$PEER_CACHE"
  fi
  # Debian 12's Vulkan headers (1.3.239) lack VK_EXT_layer_settings: drop the block that
  # asks for validation-layer settings and create the instance without the pNext chain.
  local vk=$SRC/ggml/src/ggml-vulkan/ggml-vulkan.cpp
  if grep -q 'LayerSettingsCreateInfoEXT' "$vk"; then
    python3 - "$vk" <<'PY'
import re, sys
path = sys.argv[1]
src = open(path).read()
start = src.index("    VkBool32 enable_best_practice = layer_settings;")
end = src.index("    vk::InstanceCreateInfo instance_create_info(")
src = src[:start] + src[end:]
src = src.replace(
    "vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions, &layer_setting_info);",
    "vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);")
assert "LayerSettingsCreateInfoEXT" not in src
open(path, "w").write(src)
PY
  fi
  if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-simple" ]; then
    cmake -S "$SRC" -B "$BUILD" -DGGML_VULKAN=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > "$PEER_CACHE/cmake.log"
    cmake --build "$BUILD" --target llama-bench llama-simple -j "$(nproc)"
  fi
  # The greedy check's driver (benches/peer-greedy.cpp): token ids in, token ids out.
  if [ ! -x "$GREEDY" ] || [ benches/peer-greedy.cpp -nt "$GREEDY" ]; then
    g++ -O2 -std=c++17 benches/peer-greedy.cpp -I"$SRC/include" -I"$SRC/ggml/include" \
      -L"$BUILD/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$BUILD/bin" -o "$GREEDY"
  fi
}

build_llamacpp
[ "$BUILD_ONLY" = 1 ] && exit 0

WALSH=${WALSH:-target/release/walsh}
MODELS=${MODELS:-shipped random-1024x8}
WEIGHTS=${WEIGHTS:-f16}
ROUNDS=${ROUNDS:-3}
ADAPTER=${ADAPTER:-vulkan}
VK_DEVICE=${VK_DEVICE:-0}
PROMPT=${PROMPT:-ROMEO:}
GEN_TOKENS=${GEN_TOKENS:-128}
CHECK_TOKENS=${CHECK_TOKENS:-64}
OUT_DIR=${OUT_DIR:-bench-results}
LLAMA_REPS=${LLAMA_REPS:-1}
export GGML_VK_VISIBLE_DEVICES=$VK_DEVICE
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
[ -x "$WALSH" ] || cargo build --release --bin walsh
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ROWS=$TMP/rows.jsonl
: > "$ROWS"
PLEN=$(printf '%s' "$PROMPT" | wc -c)
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src shaders benches || echo "-dirty")
# Others' work on the machine slows both engines alike; the report records the load.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# A command as the report shows it: temporary paths as $TMP.
cmdline() { python3 -c 'import json,sys; print(json.dumps(sys.argv[2].replace(sys.argv[1], "$TMP")))' "$TMP" "$*"; }
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))'"$2"')' "$1"; }
# Appends one JSON object (the key=value pairs given, values as JSON) to the results.
row() { python3 -c 'import json,sys; print(json.dumps({k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}))' "$@" >> "$ROWS"; }
str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

model_dir() {  # the walsh model directory for a MODELS entry, written if random
  case $1 in
    shipped) echo models/shakespeare-dense ;;
    random-*x*)
      local d=${1#random-}; local layers=${d#*x}; d=${d%x*}
      local dir=$TMP/$1
      if [ ! -d "$dir" ]; then
        local init=(init-model --out "$dir" --hidden-size "$d" --layers "$layers"
          --heads $((d / 64)) --context 512 --attn-output dense --query dense --dtype f16)
        "$WALSH" "${init[@]}" > /dev/null
        row kind='"prepare"' cmd="$(cmdline walsh "${init[@]}")"
      fi
      echo "$dir" ;;
    *) echo "unknown model $1 (shipped or random-DxL)" >&2; return 1 ;;
  esac
}

for m in $MODELS; do
  base=$(model_dir "$m")
  variant=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c.get("attn_output","dense")+"/"+c.get("query","dense"))' "$base/config.json")
  if [ "$variant" != dense/dense ]; then
    echo "$m: $base is $variant, not dense/dense: skipped" >&2; continue
  fi
  context=$(json_field "$base/config.json" '["max_position_embeddings"]')
  # walsh slides its window when the context fills; llama.cpp does not: stay inside it.
  n=$(( GEN_TOKENS < context - PLEN ? GEN_TOKENS : context - PLEN ))
  check=$(( CHECK_TOKENS < n ? CHECK_TOKENS : n ))
  for w in $WEIGHTS; do
    dir=$base
    case $w in
      q8_0|q4_0)
        dir=$TMP/$m-${w%_0}
        quantize=(quantize --model "$base" --out "$dir" --weights "${w%_0}")
        "$WALSH" "${quantize[@]}" > /dev/null
        row kind='"prepare"' cmd="$(cmdline walsh "${quantize[@]}")" ;;
    esac
    gguf=$TMP/$m-$w.gguf
    export_args=(export --gguf "$gguf" --model "$dir" --weights "$w" --name "walsh-$m")
    "$WALSH" "${export_args[@]}" >&2
    row kind='"prepare"' cmd="$(cmdline walsh "${export_args[@]}")"
    walsh_gen=("$WALSH" --adapter "$ADAPTER" generate --model "$dir" --json --temperature 0 --prompt "$PROMPT")
    # The greedy check: the same tokens, or no speed figure counts.
    "${walsh_gen[@]}" --max-tokens "$check" > "$TMP/w.json"
    "$GREEDY" "$gguf" "$check" 99 "$PROMPT" > "$TMP/l.json"
    wt=$(json_field "$TMP/w.json" '["tokens"][0]')
    lt=$(json_field "$TMP/l.json" '["tokens"]')
    device=$(json_field "$TMP/w.json" '["stats"]["device"]')
    text() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1] + bytes(json.loads(sys.argv[2])).decode("utf-8", "replace")))' "$PROMPT" "$1"; }
    same=false; [ "$wt" = "$lt" ] && same=true
    row kind='"greedy"' model="$(str "$m")" weights="$(str "$w")" tokens="$check" same=$same \
      walsh_text="$(text "$wt")" llama_text="$(text "$lt")" walsh_device="$(str "$device")" \
      walsh_cmd="$(cmdline "walsh --adapter $ADAPTER generate --model $dir --json --temperature 0 --prompt '$PROMPT' --max-tokens $check")" \
      llama_cmd="$(cmdline "GGML_VK_VISIBLE_DEVICES=$VK_DEVICE peer-greedy $gguf $check 99 '$PROMPT'")"
    echo "$m $w greedy $check tokens: walsh = llama.cpp: $same" >&2
    if [ "$same" != true ]; then
      echo "  walsh:     $(text "$wt")" >&2; echo "  llama.cpp: $(text "$lt")" >&2
      continue
    fi
    bench=("$BUILD/bin/llama-bench" -m "$gguf" -p "$PLEN" -n "$n" -ngl 99 -r "$LLAMA_REPS" -o json)
    engines="walsh llama"; [ "$WITH_CPU" = 1 ] && engines="$engines llama-cpu"
    for r in $(seq "$ROUNDS"); do
      for e in $engines; do
        case $e in
          walsh) "${walsh_gen[@]}" --max-tokens "$n" > "$TMP/w.json"
                 tps=$(json_field "$TMP/w.json" '["stats"]["decode_tokens_per_s"]')
                 cmd="walsh --adapter $ADAPTER generate --model $dir --json --temperature 0 --prompt '$PROMPT' --max-tokens $n" ;;
          llama) "${bench[@]}" > "$TMP/b.json" 2> "$TMP/b.err" || { cat "$TMP/b.err" >&2; exit 1; }
                 tps=$(python3 -c 'import json,sys; print([t["avg_ts"] for t in json.load(open(sys.argv[1])) if t["n_gen"] > 0][0])' "$TMP/b.json")
                 llama_device=$(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))[0]; print(b["gpu_info"] + " / " + b["backends"] + ", llama.cpp build " + b["build_commit"])' "$TMP/b.json")
                 cmd="GGML_VK_VISIBLE_DEVICES=$VK_DEVICE llama-bench -m $gguf -p $PLEN -n $n -ngl 99 -r $LLAMA_REPS" ;;
          llama-cpu) "$BUILD/bin/llama-bench" -m "$gguf" -p "$PLEN" -n "$n" -ngl 0 -dev none -r "$LLAMA_REPS" -o json > "$TMP/c.json" 2> "$TMP/c.err" || { cat "$TMP/c.err" >&2; exit 1; }
                 tps=$(python3 -c 'import json,sys; print([t["avg_ts"] for t in json.load(open(sys.argv[1])) if t["n_gen"] > 0][0])' "$TMP/c.json")
                 cmd="llama-bench -m $gguf -p $PLEN -n $n -ngl 0 -dev none -r $LLAMA_REPS" ;;
        esac
        echo "$m $w round $r $e: $tps tok/s" >&2
        row kind='"decode"' model="$(str "$m")" weights="$(str "$w")" engine="$(str "$e")" round="$r" \
          tokens="$n" tok_s="$tps" cmd="$(cmdline "$cmd")"
      done
    done
    row kind='"llama_device"' model="$(str "$m")" weights="$(str "$w")" device="$(str "${llama_device:-}")"
  done
done

mkdir -p "$OUT_DIR"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
report=$(python3 - "$ROWS" "$OUT_DIR" "$COMMIT" "$LLAMA_CPP_PYTHON" "$ADAPTER" "$PROMPT" "$ROUNDS" \
  "$LOAD_START" "$LOAD_END" "$(nproc)" "$LLAMA_REPS" <<'PY'
import json, re, statistics, sys
rows_path, out_dir, commit, llama_version, adapter, prompt, rounds, load0, load1, cpus, reps = sys.argv[1:]
rows = [json.loads(l) for l in open(rows_path)]
greedy = [r for r in rows if r["kind"] == "greedy"]
device = next((r["walsh_device"] for r in greedy), adapter)
llama_device = next((r["device"] for r in rows if r["kind"] == "llama_device" and r["device"]), "")
slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
runs = {}
for r in rows:
    if r["kind"] == "decode":
        runs.setdefault((r["model"], r["weights"]), {}).setdefault(r["engine"], []).append(r)
summary = []
for (model, weights), by in runs.items():
    med = {e: statistics.median(x["tok_s"] for x in v) for e, v in by.items()}
    summary.append({"model": model, "weights": weights, "tokens": by["walsh"][0]["tokens"],
                    "median_tok_s": med,
                    "rounds": {e: [x["tok_s"] for x in v] for e, v in by.items()},
                    "commands": {e: v[0]["cmd"] for e, v in by.items()},
                    "walsh_over_llama": med["walsh"] / med["llama"] if med.get("llama") else None})
# "kind" tells `walsh bench merge` this is not an adapter report.
report = {"kind": "peer-llamacpp", "walsh_commit": commit,
          "llama_cpp": f"llama-cpp-python {llama_version} sdist, vendor/llama.cpp, Vulkan backend (Release)",
          "walsh_device": device, "llama_device": llama_device, "prompt": prompt,
          "rounds": int(rounds), "llama_bench_repetitions": int(reps),
          "cpus": int(cpus), "load_average_start": load0, "load_average_end": load1,
          "prepare": [r["cmd"] for r in rows if r["kind"] == "prepare"],
          "greedy": greedy, "decode": summary}
path = f"{out_dir}/peer-llamacpp-{slug}.json"
with open(path, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
print(path)
PY
)
render "$report"
