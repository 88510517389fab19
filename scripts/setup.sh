#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv holding exactly the versions of
# requirements.lock (every transitive dependency, pinned; refresh it with `bash scripts/lock.sh`), the CPU
# build of PyTorch first (never the multi-GB CUDA build on a machine without a GPU), then nested-ac in
# editable mode without dependencies. Idempotent and quick when nothing changed.
# Override the interpreter with PYTHON=..., the torch requirement with TORCH_SPEC=... (e.g. a CUDA build on a
# GPU machine; then torch alone differs from the lock).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-$(grep '^torch==' requirements.lock)}
stamp=.venv/.nested-ac-installed
want="$TORCH_SPEC $(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # torch first, pinned: the locked packages then find torch satisfied and pull no CUDA packages.
    .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
    grep -v '^torch==' requirements.lock > .venv/requirements-without-torch.txt
    .venv/bin/python -m pip install --quiet -r .venv/requirements-without-torch.txt
    .venv/bin/python -m pip install --quiet --no-deps -e .
    echo "$want" > "$stamp"
fi
