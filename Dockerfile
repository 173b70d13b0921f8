# syntax=docker/dockerfile:1
# One build, two targets (DESIGN.md §8):
#   docker build --target api    -t wkd-api .     the torch-free API (also runs `alembic` and `wkd keys`)
#   docker build --target worker -t wkd-worker .  the Celery worker with the CUDA build of PyTorch
# docker-compose.yml builds both; docs/deploy.md explains the images.
# Build stages install into /opt/venv; the final stages copy that venv onto a clean slim
# image, so no compiler, pip cache or source tree is left in what runs.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------- build stages
FROM ${PYTHON_IMAGE} AS build-api
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wkd_core/ wkd_core/
COPY service/ service/
COPY api/ api/
COPY worker/ worker/
COPY cli/ cli/
COPY migrations/ migrations/
# The base install plus the API extra: no torch (a test checks that the API never imports it).
RUN pip install --no-cache-dir "./[api,s3]"

FROM build-api AS build-worker
# PyPI's linux x86_64 wheel of torch 2.14.1 is the CUDA build: it brings the CUDA runtime
# libraries as pip packages, so the image needs only the host's driver (NVIDIA Container
# Toolkit). TORCH_INDEX_URL lets docker-compose.cpu.yml pick the CPU-only wheels instead.
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-cache-dir "./[worker,s3]"

# ---------------------------------------------------------------------------- final stages
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    WKD_DATA_DIR=/data
RUN groupadd --gid 10001 wkd \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin wkd \
 && mkdir -p /data/artifacts /data/checkpoints /data/datasets /data/cache \
 && chown -R 10001:10001 /data
WORKDIR /app
# `alembic upgrade head` runs from /app (the migrate service); the code is in /opt/venv.
COPY alembic.ini ./
COPY migrations/ migrations/

FROM runtime AS api
COPY --from=build-api /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The same command line as docker-compose.yml's api service (there the source of truth).
CMD ["python", "-m", "api.serve", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--log-level", "info", "--timeout-graceful-shutdown", "5"]

FROM runtime AS worker
COPY --from=build-worker /opt/venv /opt/venv
# nvidia-container-toolkit reads these: expose the reserved GPUs and the compute libraries.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID
USER 10001:10001
# The worker's main process answers a remote-control ping while its pool process runs a job.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A worker.celery_app inspect ping --timeout 10 --destination wkd@$(hostname)"]
# No --concurrency, as in docker-compose.yml: WKD_JOBS_PER_GPU jobs at once on a GPU, 1 without.
CMD ["celery", "-A", "worker.celery_app", "worker", "--pool", "prefork", "--hostname", "wkd@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
