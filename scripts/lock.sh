#!/usr/bin/env bash
# Refresh requirements.lock: every transitive dependency of nested-ac with its dev and ray extras, pinned,
# resolved from pyproject.toml's ranges (the ranges stay for library users; the lock is what set-up, tests
# and runs use). Torch is pinned to its CPU build by scripts/torch-pin.txt; scripts/setup.sh installs it
# first. Run after changing a dependency in pyproject.toml, then `bash scripts/setup.sh`; commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pip-compile --quiet --extra dev --extra ray --strip-extras --no-emit-index-url \
    --no-emit-find-links --allow-unsafe --constraint scripts/torch-pin.txt --output-file requirements.lock \
    pyproject.toml
