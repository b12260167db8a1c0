#!/usr/bin/env bash
# Creates .venv and installs grokloop into it, editable (a user who only runs the lab can
# `pip install -c constraints.txt .` instead: the Hydra tree ships inside the package).
# constraints.txt pins torch==2.13.0, the CPU build on the lab machines' disk; letting pip resolve
# the package's torch range alone would download several GB of CUDA wheels.
# Usage: bash setup.sh [--test]   (--test also installs pytest and the headless browser for the
# report tests)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt torch
if [[ "${1:-}" == "--test" ]]; then
  .venv/bin/pip install -q -c constraints.txt -e ".[dev]"
  if [[ -f .ci/install_chromium.sh ]]; then bash .ci/install_chromium.sh; fi
else
  .venv/bin/pip install -q -c constraints.txt -e .
fi
