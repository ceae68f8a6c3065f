# syntax=docker/dockerfile:1
# The inference server, CPU: `pip install .[serve]` only (no torch), run as a
# non-root user. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t cnn-serving-server .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/model_repository:/models:ro" cnn-serving-server
# The Ray Serve image for KubeRay (deploy/k8s/rayservice.yaml) adds the cluster extra:
#   docker build -f docker/server.Dockerfile --build-arg EXTRAS=serve,cluster -t cnn-serving-ray .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=serve
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the server package needs: the exporter (and torch) stay out.
COPY pyproject.toml README.md ./
COPY modelrepo/ modelrepo/
COPY imaging/ imaging/
COPY engines/ engines/
COPY server/ server/
COPY protos/ protos/
COPY client/ client/
# The checks fail the build if anything pulled torch in (-I: the installed package, not /src).
# Versions are pinned in pyproject.toml, which hadolint cannot read.
# hadolint ignore=DL3013
RUN pip install ".[${EXTRAS}]" \
    && python -I -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    && python -I -c "import server.app, server.grpc.probe"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 cnn \
    && useradd --system --uid 10001 --gid cnn --no-create-home --shell /usr/sbin/nologin cnn
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# Triton's ports: HTTP 8000, gRPC 8001, Prometheus metrics 8002.
EXPOSE 8000 8001 8002
# grpc.health.v1 says SERVING only once every model is loaded and warmed up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "server.grpc.probe", "--address", "127.0.0.1:8001", "--timeout", "3"]
ENTRYPOINT ["python", "-m", "server"]
CMD ["--model-repository", "/models"]
