# syntax=docker/dockerfile:1
# The exporter: PyTorch -> ONNX into a model repository (Triton layout). In the
# compose stack it runs once and fills the `models` volume; by hand:
#   docker build -f docker/exporter.Dockerfile -t cnn-serving-exporter .
#   docker run --rm -v "$PWD/model_repository:/models" -e MODELS="resnet50 lenet5:pretrained" \
#     cnn-serving-exporter
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# CPU builds of torch/torchvision: exporting needs no CUDA, and the default
# Linux wheels on PyPI bring several GB of CUDA libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY modelrepo/ modelrepo/
COPY imaging/ imaging/
COPY engines/ engines/
COPY protos/ protos/
COPY client/ client/
# Versions are pinned in pyproject.toml, which hadolint cannot read.
# hadolint ignore=DL3013
RUN pip install --extra-index-url "${TORCH_INDEX}" ".[export]" \
    && python -I -m exporter list --format json > /dev/null

FROM ${PYTHON_IMAGE}
# The empty `models` volume takes the owner of /models from the image on first mount.
RUN groupadd --system --gid 10001 cnn \
    && useradd --system --uid 10001 --gid cnn --create-home --home-dir /home/cnn --shell /usr/sbin/nologin cnn \
    && mkdir /models \
    && chown cnn:cnn /models
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/export-models.sh /usr/local/bin/export-models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CNN_SERVING_CACHE=/home/cnn/.cache/cnn-serving
USER 10001:10001
WORKDIR /home/cnn
ENTRYPOINT ["export-models"]
CMD ["/models"]
