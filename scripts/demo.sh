#!/usr/bin/env bash
# Set-up, then a short demo: PPO with Adam on permuted CartPole, 3 tasks of 102,400 steps each: 50 whole
# rollouts of 8 envs x 256 steps, so the run ends where the third task does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nested-ac train --steps 307200 --set env.schedule.every=102400 --name demo "$@"
