#!/usr/bin/env bash
# GPU check for a machine with a CUDA device, torch and transformers, and no network or Ray.
# Missing pure-Python packages travel as wheels in .whl/ (see docs/gpu.md); this script installs them.
# Per phase and per checkpoint at Pythia's 70m/160m/410m shapes against the bare minimum (overhead ratio),
# peak GPU memory, and the largest shape of 1.4b/2.8b/6.9b that fits with gradients (benchmarks/gpu.py).
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
cp -r layerlake/. "$src/layerlake/"
for part in conf etl warehouse queries; do ln -s "$PWD/$part" "$src/layerlake/$part"; done
export PYTHONPATH=$src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp/layerlake-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python3 benchmarks/gpu.py --out "$out" "$@"
