# syntax=docker/dockerfile:1
# The inference server on an NVIDIA GPU: CUDA runtime + cuDNN base, ONNX Runtime
# with the CUDA and TensorRT execution providers (`.[serve,gpu]`), non-root.
# Needs the NVIDIA Container Toolkit on the host:
#   docker build -f docker/server-gpu.Dockerfile -t cnn-serving-server-gpu .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/model_repository:/models:ro" \
#     cnn-serving-server-gpu
# onnxruntime-gpu 1.2x+ is built for CUDA 12 and cuDNN 9, TensorRT 10 comes from PyPI.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base image tag fixes the Ubuntu release; exact package versions vanish from
# the mirrors with each security update, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelrepo/ modelrepo/
COPY imaging/ imaging/
COPY engines/ engines/
COPY server/ server/
COPY protos/ protos/
COPY client/ client/
# `serve` pins the CPU onnxruntime and `gpu` onnxruntime-gpu; both install into
# the same `onnxruntime` package directory, so drop the CPU one and lay the GPU
# build (same pinned version) back over it. The check fails the build if the
# result lacks the GPU providers or pulled torch in (-I: the installed package, not /src).
# Versions are pinned in pyproject.toml, which hadolint cannot read.
# hadolint ignore=DL3013
RUN pip install ".[serve,gpu]" \
    && ort_gpu="$(pip freeze | grep -i '^onnxruntime-gpu==')" \
    && pip uninstall -y onnxruntime \
    && pip install --no-deps --force-reinstall "${ort_gpu}" \
    && python -I -c "import onnxruntime as o, sys; p = o.get_available_providers(); \
sys.exit(not {'CUDAExecutionProvider', 'TensorrtExecutionProvider'} <= set(p))" \
    && python -I -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

FROM ${CUDA_IMAGE}
# The base image tag fixes the Ubuntu release; exact package versions vanish from
# the mirrors with each security update, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cnn \
    && useradd --system --uid 10001 --gid cnn --no-create-home --shell /usr/sbin/nologin cnn
COPY --from=build /opt/venv /opt/venv
# ONNX Runtime's TensorRT provider loads libnvinfer from the pip `tensorrt` wheels.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs:${LD_LIBRARY_PATH}
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002
# TensorRT builds its engines while models warm up: give the start more time.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-m", "server.grpc.probe", "--address", "127.0.0.1:8001", "--timeout", "3"]
ENTRYPOINT ["python", "-m", "server"]
CMD ["--model-repository", "/models"]
