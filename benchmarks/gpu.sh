#!/usr/bin/env bash
# GPU figures in one run (benchmarks/gpu.py): prints one JSON object.
#
#   bash benchmarks/gpu.sh wheels             # here, with PyPI: fetch what a bare GPU machine lacks into .whl/
#   bash benchmarks/gpu.sh [--out FILE]       # there: install from .whl/ what is missing, then measure (≤ 8 min)
#   bash benchmarks/gpu.sh --smoke            # any machine: every section at tiny sizes on the CPU
#
# The GPU machine has Python 3.12 with torch and most of interp's dependencies but no network: .whl/
# (git-ignored) travels with the working tree. interp itself runs from src/, not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = wheels ]; then
  rm -rf .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r benchmarks/gpu-wheels.txt
  ls .whl
  exit 0
fi

missing=$(python3 -c '
import importlib.util
names = {"captum": "captum", "pydantic": "pydantic", "google_crc32c": "google-crc32c"}
print(" ".join(pkg for mod, pkg in names.items() if importlib.util.find_spec(mod) is None))')
if [ -n "$missing" ]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: this Python lacks $missing and there is no .whl/ folder: run 'bash benchmarks/gpu.sh wheels' where PyPI is reachable, and bring .whl/ along" >&2
    exit 2
  fi
  echo "installing from .whl/ (missing: $missing)" >&2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/interp-site .whl/*.whl
  export PYTHONPATH="/tmp/interp-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu.py "$@"
