# syntax=docker/dockerfile:1
# mfql images. Targets:
#   serve (default)  slim CPU serving image: the `serve` extra only (no torch, no compilers)
#   serve-cuda       the same server on an NVIDIA CUDA runtime with onnxruntime-gpu
#   train            training + export tooling (`train` and `export` extras)
# docker build -t mfql-serve .            docker build --target serve-cuda -t mfql-serve:cuda .
ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- build: install the serving extra into a self-contained virtualenv ----
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training/ training/
COPY exporters/ exporters/
COPY server/ server/
COPY clients/ clients/
RUN python -m venv /opt/mfql \
    && /opt/mfql/bin/pip install --no-cache-dir ".[serve]"

# ---- serve: what runs next to the robot controller ----
FROM python:${PYTHON_VERSION}-slim AS serve
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mfql \
    && mkdir /models && chown mfql /models
COPY --from=build /opt/mfql /opt/mfql
ENV PATH=/opt/mfql/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MFQL_HOST=0.0.0.0 \
    MFQL_PORT=8000
USER 10001
EXPOSE 8000
# Mount your own bundles at /models and set MFQL_MODEL_REPOSITORY=/models;
# without it the embedded models serve (default: cube-single).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"]
CMD ["mfql-serve"]

# ---- serve-cuda: onnxruntime-gpu on a CUDA runtime base ----
FROM ${CUDA_IMAGE} AS serve-cuda
# Ubuntu's python3 is whatever the CUDA base ships; pinning its exact Debian revision would
# break rebuilds whenever the archive moves, so DL3008 is ignored here on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training/ training/
COPY exporters/ exporters/
COPY server/ server/
COPY clients/ clients/
RUN python3 -m venv /opt/mfql \
    && /opt/mfql/bin/pip install --no-cache-dir ".[gpu]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin mfql \
    && mkdir /models && chown mfql /models
WORKDIR /
ENV PATH=/opt/mfql/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MFQL_HOST=0.0.0.0 \
    MFQL_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"]
CMD ["mfql-serve"]

# ---- train: data generation, training, export ----
FROM python:${PYTHON_VERSION}-slim AS train
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mfql
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY training/ training/
COPY exporters/ exporters/
COPY server/ server/
COPY clients/ clients/
RUN python -m venv /opt/mfql \
    && /opt/mfql/bin/pip install --no-cache-dir ".[train,export]"
ENV PATH=/opt/mfql/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl
USER 10001
WORKDIR /home/mfql
CMD ["mfql-train", "--help"]
