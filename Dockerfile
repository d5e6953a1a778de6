# The char-RNN service, installed and started exactly as `make serve` does it:
#   install  bash scripts/setup.sh                      (EXTRAS="": no dev tools)
#   start    .venv/bin/python -m app --host ... --port 8000
# tests/test_container.py checks that this file, the Makefile, setup.sh and
# docker-compose.yml keep agreeing on the commands, the port and the checkpoint path.
# Builds with BuildKit (Docker's default builder) or podman/buildah: it uses RUN --mount.
#
# Build arguments (all optional):
#   BASE_IMAGE       any image with Python 3.11+ (venv module included) and useradd
#   TORCH_INDEX_URL  where PyTorch comes from (default: PyTorch's CPU index; "" = PyPI)
#   TORCH_SPEC       what setup.sh installs as PyTorch: a requirement or a wheel file
#
#   CPU (default)   docker build -t charrnn-service .
#   CUDA            docker build -t charrnn-service:cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#                   PyTorch's CUDA wheels bring their own CUDA libraries, so the slim base
#                   only needs the host's driver (NVIDIA Container Toolkit, `--gpus all`).
#                   A CUDA base works too if it has Python 3.11+, e.g. an image built
#                   FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 with python3-venv.
#   Local wheel     (no access to PyTorch's index) copy the wheel into docker-wheels/ (git
#                   ignored) and name it; the folder is mounted for the install only:
#                     --build-arg TORCH_INDEX_URL= \
#                     --build-arg TORCH_SPEC=docker-wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

ARG BASE_IMAGE=python:3.11-slim

# docker-wheels/ when it exists, else just pyproject.toml (COPY needs one source that
# matches; the [s] glob may match nothing). Mounted during the install, never in the image.
FROM scratch AS wheels
COPY pyproject.toml docker-wheel[s] /wheels/

FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, named numerically in USER below, so a host or orchestrator can tell the
# user is not root without reading the image's /etc/passwd.
RUN groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid app --shell /usr/sbin/nologin app
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml, README.md (its
# metadata) or setup.sh change, not on every code change. The packages are empty stubs
# here; the editable install finds the real code once it is copied below.
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/
RUN --mount=type=bind,from=wheels,source=/wheels,target=/app/docker-wheels \
    mkdir app model training \
    && touch app/__init__.py model/__init__.py training/__init__.py \
    && EXTRAS="" bash scripts/setup.sh

# The shipped checkpoint (CHECKPOINT points elsewhere to serve another one, e.g. mounted).
# Owned by the service's user, so it can read them whatever mode they were copied with.
COPY --chown=10001:10001 checkpoints/ checkpoints/
COPY app/ app/
COPY model/ model/
COPY training/ training/

# Compile the decoding kernels (numba) now, into a cache the service's user owns: a start
# then loads them in a second instead of compiling for ~15 s. On another CPU model numba
# finds the cache stale and recompiles into the same folder.
ENV CHECKPOINT=/app/checkpoints/shakespeare.safetensors \
    NUMBA_CACHE_DIR=/app/.numba-cache
RUN /app/.venv/bin/python -c "from model.checkpoint import load_checkpoint; from model.decoding.decoder import BatchDecoder; from model.scoring import score_text; model = load_checkpoint('$CHECKPOINT').build_model(); BatchDecoder(model, 1); score_text(model, [0, 1, 2])" \
    && chown -R 10001:10001 /app/.numba-cache
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["/app/.venv/bin/python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
