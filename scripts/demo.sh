#!/usr/bin/env bash
# Set-up, then the demo: PPO-Adam, PPO with continual backprop (--cbp) and PPO with Shrink & Perturb at
# each switch, on permuted CartPole, 10 tasks of 61,440 steps, seed 0, two at a time (the experiment
# nested_ac/experiments/demo.yaml: nested-ac list experiments). It ends with the report's table and each
# variant's P_late and verdict; the three runs are in runs/demo/, one TensorBoard logdir. A second call
# finds them finished and prints the report again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nested-ac sweep demo --workers 2 "$@"
