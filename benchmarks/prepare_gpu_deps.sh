#!/usr/bin/env bash
# Packages the project needs that a bare GPU machine's Python may lack (fvcore, yacs, iopath, termcolor,
# pycocotools), gathered into .gpu/site for a machine without network access: pure-Python packages are
# copied from this environment, pycocotools comes as a wheel for the target Python (default 3.12).
# Usage, from the repository root on a machine with PyPI access:
#   bash benchmarks/prepare_gpu_deps.sh [PYTHON_VERSION]
# then on the GPU machine: PYTHONPATH=$PWD/.gpu/site:$PWD bash benchmarks/gpu_check.sh OUTDIR
set -euo pipefail
target=${1:-3.12}
site=.gpu/site
mkdir -p "$site"
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
packages=$(python - <<'PY'
import importlib, os
for name in ("fvcore", "yacs", "iopath", "termcolor"):
    print(os.path.dirname(importlib.import_module(name).__file__))
PY
)
for package in $packages; do cp -r "$package" "$site/"; done
wheels=$(mktemp -d)
python -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" pycocotools
python -m zipfile -e "$wheels"/pycocotools-*.whl "$site"
find "$site" -name __pycache__ -prune -exec rm -rf {} +
echo "wrote $site: $(ls "$site" | tr '\n' ' ')"
