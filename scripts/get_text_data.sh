#!/usr/bin/env bash
# Real text for the training examples and tests: Debian's fortune-cookie packages (English, German,
# Spanish, Italian), downloaded with apt (no other network), unpacked with dpkg -x into the gitignored
# data/ directory at the repository root (override with FASTBERT_DATA), then turned into:
#   $DATA/text/pretrain/{train,heldout}/   raw text, blank-line separated documents (MLM+NSP pre-training)
#   $DATA/text/langid/{train,eval}.jsonl   language of a cookie: en / de / es / it   (finetune --task cls)
#   $DATA/text/ner/{train,eval}.jsonl      who is quoted: the attribution's name as B-PER/I-PER  (--task ner)
#   $DATA/text/qa/{train,eval}.jsonl       "Who said this?" answered from the cookie text      (--task qa)
# Safe to run again: it does nothing when the datasets are already there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${FASTBERT_DATA:-$ROOT/data}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ -f "$DATA/text/.complete" ]; then
  echo "$DATA/text is ready"; exit 0
fi
PKGS=(fortunes fortunes-min fortunes-de fortunes-es fortunes-it)
mkdir -p "$DATA/debian/debs" "$DATA/debian/root"
cd "$DATA/debian/debs"
if ! ls fortunes_*.deb >/dev/null 2>&1; then
  if ! apt-get download "${PKGS[@]}" 2>/dev/null; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get download "${PKGS[@]}"
  fi
fi
for deb in *.deb; do dpkg -x "$deb" "$DATA/debian/root"; done
"$PY" "$ROOT/scripts/build_text_datasets.py" "$DATA/debian/root/usr/share/games/fortunes" "$DATA/text"
touch "$DATA/text/.complete"
echo "wrote $DATA/text"
