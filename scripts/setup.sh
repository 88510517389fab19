#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with the CPU build of PyTorch (never the
# multi-GB CUDA build on a machine without a GPU) and nested-ac installed in editable mode with its
# test tools and the Ray extra (sweeps on clusters). Idempotent and quick when nothing changed.
# Override the interpreter with PYTHON=..., the torch requirement with TORCH_SPEC=... (e.g. a CUDA
# build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.nested-ac-installed
want="$TORCH_SPEC $(sha256sum pyproject.toml | cut -c1-16)"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # torch first, pinned: installing nested-ac then finds torch satisfied and pulls no CUDA packages.
    .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
    .venv/bin/python -m pip install --quiet -e ".[dev,ray]"
    echo "$want" > "$stamp"
fi
