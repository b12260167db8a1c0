#!/usr/bin/env bash
# Creates .venv and installs grokloop into it (editable, so `conf/` is found from the checkout).
# torch is installed first, pinned, because on the lab machines torch==2.13.0 is the local CPU
# build; letting pip resolve an unpinned torch would download several GB of CUDA wheels.
# Usage: bash setup.sh [--test]   (--test also installs pytest and the headless browser for the
# report tests)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
if [[ "${1:-}" == "--test" ]]; then
  .venv/bin/pip install -q -e ".[dev]"
  if [[ -f .ci/install_chromium.sh ]]; then bash .ci/install_chromium.sh; fi
else
  .venv/bin/pip install -q -e .
fi
