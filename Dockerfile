# recsys-serve. CPU:  docker build -t recsys-serve .
#               GPU:  docker build --target runtime-gpu -t recsys-serve:gpu .
# Settings come from RECSYS_<SECTION>__<KEY> environment variables (README: configuration), e.g.
#   docker run -p 8000:8000 -e RECSYS_ADMISSION__DEFAULT_TIMEOUT_MS=200 recsys-serve
# tests/deploy/test_dockerfile.py lints this file and replays the runtime stage's steps.

# Build stage: the training group (CPU torch) builds the default model repository.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app
COPY config config
COPY models models
COPY scheduler scheduler
# Versions are pinned in pyproject.toml (DL3013 cannot see them).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[train]" \
    && python -m models build

# Runtime stage: the serving group only (no torch), a non-root user, the repository copied in
# (mount another over /srv/model_repository to serve your own).
FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    RECSYS_SERVER__HOST=0.0.0.0 \
    RECSYS_SERVER__PORT=8000 \
    RECSYS_GRPC__PORT=8001
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY config config
COPY models models
COPY scheduler scheduler
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 recsys
COPY --from=build --chown=recsys /src/model_repository /srv/model_repository
USER 10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['RECSYS_SERVER__PORT']}/v2/health/live\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]

# GPU runtime: CUDA and cuDNN from NVIDIA's image, onnxruntime-gpu instead of onnxruntime.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS runtime-gpu
ARG ORT_GPU_VERSION=1.31.1
ENV PYTHONUNBUFFERED=1 \
    RECSYS_SERVER__HOST=0.0.0.0 \
    RECSYS_SERVER__PORT=8000 \
    RECSYS_GRPC__PORT=8001 \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY config config
COPY models models
COPY scheduler scheduler
RUN pip install --no-cache-dir . \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && useradd --create-home --uid 10001 recsys
COPY --from=build --chown=recsys /src/model_repository /srv/model_repository
USER 10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['RECSYS_SERVER__PORT']}/v2/health/live\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
