#!/usr/bin/env bash
# Set-up, then a short demo: PPO with Adam on permuted CartPole, 3 tasks of 100k steps (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nested-ac train --steps 300000 --set env.schedule.every=100000 --name demo "$@"
