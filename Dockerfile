# Tessera image. CPU by default:
#   docker build -t tessera .
# GPU (onnxruntime-gpu on a CUDA runtime base):
#   docker build -t tessera:gpu --build-arg RUNTIME=gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
# Run:
#   docker run -p 8000:8000 -p 8001:8001 -v $PWD/model_repository:/models tessera
ARG BASE_IMAGE=python:3.11-slim

# The wheel, built on the same base as the image (with TESSERA_COMPILE=1 its extension modules must match the
# image's Python); the C compiler stays in this stage.
FROM ${BASE_IMAGE} AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && \
    if ! command -v python3 >/dev/null 2>&1; then \
      apt-get install -y --no-install-recommends python3 python3-venv; \
    fi && \
    if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
      apt-get install -y --no-install-recommends python3-dev; \
    fi && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY server ./server
COPY loadtests ./loadtests
# The image's request path is compiled (README, "The compiled request path"; CI builds the same wheel the same
# way and runs the suite on it: .ci/compiled). --build-arg TESSERA_COMPILE=0 builds it interpreted.
ARG TESSERA_COMPILE=1
RUN /opt/build/bin/pip install --no-cache-dir --upgrade pip && \
    TESSERA_COMPILE=${TESSERA_COMPILE} /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}

ARG RUNTIME=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TESSERA_MODEL_REPOSITORY=/models TESSERA_HOST=0.0.0.0

# CUDA base images carry no Python: bring one (the slim Python image already has it).
RUN if ! command -v python3 >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
      rm -rf /var/lib/apt/lists/*; \
    fi && python3 -m venv /opt/tessera
ENV PATH=/opt/tessera/bin:$PATH

COPY --from=wheel /wheels /wheels
RUN pip install --upgrade pip && pip install "$(ls /wheels/tessera-*.whl)[${RUNTIME}]" && rm -rf /wheels
COPY model_repository /models
# uid/gid 10001 as deploy/ runs it; state (audit trail, repository cache) under /var/lib/tessera, which
# Kubernetes mounts as an emptyDir beside a read-only root filesystem.
RUN groupadd --system --gid 10001 tessera && \
    useradd --system --uid 10001 --gid 10001 --create-home tessera && \
    mkdir -p /var/lib/tessera && chown tessera:tessera /var/lib/tessera
ENV TESSERA_STATE_DIR=/var/lib/tessera
USER 10001:10001
WORKDIR /home/tessera
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready').status == 200 else 1)"
# SIGTERM drains in-flight requests, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera", "serve"]
