#!/usr/bin/env bash
# GPU check for a machine with a CUDA device, torch and transformers, and no network or Ray.
# Missing pure-Python packages travel as wheels in .whl/ (see docs/gpu.md); this script installs them.
# Three parts, each saving every figure under $OUT as it is measured (so a run cut by its time limit keeps
# them), chosen by PARTS (default all three, in this order):
#   spectra    how the stored singular values are computed, per method, at Pythia's 70m-2.8b shapes
#              (benchmarks/spectra.py: svdvals, the Gram methods, float32; time and error per measure);
#   precision  what TF32 and bfloat16 autocast change in CKA, activation summaries and spectra
#              (benchmarks/precision.py);
#   check      per phase and per checkpoint at Pythia's 70m/160m/410m shapes against the bare minimum
#              (overhead ratio), peak GPU memory, and the largest shape of 1.4b/2.8b/6.9b that fits with
#              gradients (benchmarks/gpu.py; the script's arguments go to it).
# DEVICE (default cuda), SPECTRA_ARGS and PRECISION_ARGS (appended: later arguments win) shape a dry run:
#   DEVICE=cpu PARTS="spectra precision" SPECTRA_ARGS="--shapes 70m --known-shapes 70m --repeats 1" \
#   PRECISION_ARGS="--shape 70m --sequences 2 --seq-len 16 --positions 2" OUT=/tmp/dry bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# The checkout as the installed namespace would lay it out (pyproject's package-dir), without installing:
# layerlake/ plus conf/ etl/ warehouse/ queries/ as layerlake.conf, layerlake.etl, ...
src=/tmp/layerlake-src
rm -rf "$src" && mkdir -p "$src/layerlake"
cp -r src/layerlake/. "$src/layerlake/"
for part in conf etl warehouse queries; do ln -s "$PWD/$part" "$src/layerlake/$part"; done
export PYTHONPATH=$src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp/layerlake-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
parts=${PARTS:-spectra precision check}
device=${DEVICE:-cuda}
for part in $parts; do
  case $part in
    spectra)  # one layer per shape; each method twice, figures saved as they come
      python3 benchmarks/spectra.py --device "$device" --repeats 2 --known-shapes 410m --out "$out" \
        ${SPECTRA_ARGS:-} || echo "spectra: failed (figures so far in $out)" ;;
    precision)
      python3 benchmarks/precision.py --device "$device" --shape 410m --sequences 32 --seq-len 512 \
        --out "$out" ${PRECISION_ARGS:-} || echo "precision: failed (figures so far in $out)" ;;
    check)
      python3 benchmarks/gpu.py --out "$out" "$@" ;;
    *) echo "unknown part $part (spectra, precision, check)" >&2; exit 2 ;;
  esac
done
