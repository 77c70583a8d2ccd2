#!/usr/bin/env bash
# The main job: set up, then run the offline end-to-end demo (args pass through to `mabert demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/mabert demo "$@"
