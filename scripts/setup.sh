#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv holding exactly the versions of
# requirements.lock (every transitive dependency, pinned; refresh it with `bash scripts/lock.sh`), the CPU
# build of PyTorch first (never the multi-GB CUDA build on a machine without a GPU), then NS-Gym pinned
# without its dependencies (scripts/ns-gym-pin.txt), then nested-ac in editable mode without dependencies.
# Idempotent and silent when nothing changed; otherwise one line per phase.
#
# The locked torch is a CPU build (torch==X+cpu). pip looks for it where its configuration says (the
# package index, a local wheel folder); where it is not found there, as on a machine with a default pip
# configuration, it comes from PyTorch's own CPU wheel index, the one of pytorch.org's install command
# (override it with TORCH_INDEX=...), and only torch does: its dependencies are in the lock.
# Override the interpreter with PYTHON=..., the torch requirement with TORCH_SPEC=... (e.g. a CUDA build on a
# GPU machine: TORCH_SPEC="torch==2.13.0"; then torch alone differs from the lock, and it is looked up only
# where pip's configuration says).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-$(grep '^torch==' requirements.lock)}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
stamp=.venv/.nested-ac-installed
want="$TORCH_SPEC $(cat pyproject.toml requirements.lock scripts/ns-gym-pin.txt | sha256sum | cut -c1-16)"

if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" == "$want" ]; then
    exit 0
fi
say() { echo "set-up: $*"; }
started=$SECONDS
if [ ! -x .venv/bin/python ]; then
    say "creating the virtual environment .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet)

# torch first, pinned: the locked packages then find torch satisfied and pull no CUDA packages.
say "installing $TORCH_SPEC (a download of about 200 MB the first time)"
log=.venv/torch-install.log
if "${pip[@]}" "$TORCH_SPEC" 2>"$log"; then
    cat "$log" >&2
elif [[ "$TORCH_SPEC" == *+cpu ]] && grep -q "No matching distribution found for" "$log"; then
    say "$TORCH_SPEC is not where pip's configuration looks; asking PyTorch's CPU index $TORCH_INDEX"
    if ! "${pip[@]}" --index-url "$TORCH_INDEX" --no-deps "$TORCH_SPEC"; then
        say "could not install $TORCH_SPEC from $TORCH_INDEX either; set TORCH_INDEX to an index or mirror" \
            "this machine reaches, or TORCH_SPEC to a torch it can install (docs/index.md#quick-start)"
        exit 1
    fi
else
    cat "$log" >&2
    exit 1
fi

grep -v '^torch==' requirements.lock > .venv/requirements-without-torch.txt
count=$(grep -c '^[a-zA-Z0-9]' .venv/requirements-without-torch.txt)
say "installing the $count other locked packages (requirements.lock)"
"${pip[@]}" -r .venv/requirements-without-torch.txt
# NS-Gym (docs/environments.md#ns-gym) declares mujoco<3.4, the lock has mujoco 4: pinned, without its
# dependencies; its classic-control wrappers run with the locked packages (tests/test_nsgym.py).
say "installing $(cat scripts/ns-gym-pin.txt) without its dependencies (scripts/ns-gym-pin.txt)"
"${pip[@]}" --no-deps -r scripts/ns-gym-pin.txt
say "installing nested-ac from this folder (editable)"
"${pip[@]}" --no-deps -e .
echo "$want" > "$stamp"
say "done in $((SECONDS - started)) s"
