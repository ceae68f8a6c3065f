# The two commands a fresh clone needs are `make demo` and `make test`;
# both create the virtualenv and install what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
REPO   ?= model_repository
MODEL  ?= mobilenet
WEIGHTS ?=
PYTEST_ARGS ?=

export PYTHONUNBUFFERED := 1

.PHONY: setup proto export list demo serve test test-all lint clean

setup: $(STAMP)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[export,serve,dev,bench,cluster]'
	touch $@

# Regenerate protobuf code from protos/*.proto (the generated files are committed);
# grpc_service.proto also gets its gRPC stubs (protos/grpc_service_pb2_grpc.py).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. protos/model_config.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. protos/grpc_service.proto

list: $(STAMP)
	$(PY) -m exporter list

# make export MODEL=mobilenet [WEIGHTS=random|imagenet|pretrained|path]; MODEL=all exports the zoo.
# PRECISION=fp32|fp16|int8, BACKEND=onnxruntime|tensorrt (GPU), CALIBRATION=DIR|samples (int8).
PRECISION ?=
BACKEND ?=
CALIBRATION ?=
export: $(STAMP)
	$(PY) -m exporter export $(MODEL) --repository $(REPO) $(if $(WEIGHTS),--weights $(WEIGHTS)) \
	  $(if $(PRECISION),--precision $(PRECISION)) $(if $(BACKEND),--backend $(BACKEND)) \
	  $(if $(CALIBRATION),--calibration $(CALIBRATION))

# Export, check in process, then serve: classify the photos over gRPC and stop
# the server with SIGTERM (it must drain and exit 0).
DEMO_PORT ?= 18001
DEMO_METRICS_PORT ?= 18002
DEMO_HTTP_PORT ?= 18000
DEMO_CURL = PHOTO=$$($(PY) -m exporter.samples | tr ' ' '\n' | grep chelsea); \
  { printf '{"inputs":[{"name":"input","shape":[1],"datatype":"BYTES",'; \
    printf '"parameters":{"content_type":"base64"},"data":["'; base64 -w0 "$$PHOTO"; \
    printf '"]}],"outputs":[{"name":"logits","parameters":{"classification":3}}]}'; } \
  | curl -sf 127.0.0.1:$(DEMO_HTTP_PORT)/v2/models/efficientnet_lite0/infer \
    -H 'Content-Type: application/json' --data-binary @-
demo: $(STAMP)
	$(PY) -m exporter export mobilenet_v2 --repository $(REPO) --version 1
	$(PY) -m exporter export efficientnet_lite0 --weights pretrained --repository $(REPO) --version 1
	$(PY) -m exporter predict efficientnet_lite0 --repository $(REPO) $$($(PY) -m exporter.samples)
	$(PY) -m exporter predict mobilenet_v2 --top-k 3 --repository $(REPO) $$($(PY) -m exporter.samples)
	@log=$(REPO)/.demo-server.log; \
	$(PY) -m server --model-repository $(REPO) --host 127.0.0.1 --grpc-port $(DEMO_PORT) \
	  --metrics-port $(DEMO_METRICS_PORT) --metrics-host 127.0.0.1 --http-port $(DEMO_HTTP_PORT) \
	  > $$log 2>&1 & pid=$$!; \
	for i in $$(seq 120); do grep -q '^ready:' $$log && break; \
	  kill -0 $$pid 2>/dev/null || { cat $$log; exit 1; }; sleep 1; done; \
	echo "server ready (pid $$pid): classifying over gRPC"; \
	$(PY) -m client --url 127.0.0.1:$(DEMO_PORT) classify --model efficientnet_lite0 --top-k 3 \
	  $$($(PY) -m exporter.samples); status=$$?; \
	$(PY) -m client --url 127.0.0.1:$(DEMO_PORT) stats --model efficientnet_lite0 || status=1; \
	echo "the try-it page: http://127.0.0.1:$(DEMO_HTTP_PORT)/ while this runs; make serve keeps it up on :8000 (docs/http.md)"; \
	echo "classifying a photo over HTTP with curl:"; \
	printf '%s\n' '$(subst ','"'"',$(DEMO_CURL))'; \
	{ $(DEMO_CURL); } && echo || status=1; \
	kill -TERM $$pid; wait $$pid; code=$$?; \
	echo "server stopped with exit code $$code"; \
	[ $$status -eq 0 ] && [ $$code -eq 0 ]
	@echo "the demo models side by side, in process (PyTorch eager vs ONNX Runtime, batch 1):"
	$(PY) benchmarks/latency.py --repository $(REPO) --models mobilenet_v2,efficientnet_lite0 \
	  --backends torch,onnxruntime --batch-sizes 1 --repeats 2 --seconds 0.5 --max-seconds 1.5 \
	  --no-charts --out results/demo

serve: $(STAMP)
	$(PY) -m server --model-repository $(REPO)

# The benchmark report (about 10 minutes on 2 cores): in-process latency of the default
# models (benchmarks/latency.py), then load against a server it starts on mobilenet_v2,
# with dynamic batching on and off (benchmarks/load.py). Results, Markdown and charts
# land in $(BENCH_OUT)/.
BENCH_OUT ?= results
.PHONY: bench
bench: $(STAMP)
	$(PY) benchmarks/latency.py --out $(BENCH_OUT)
	$(PY) benchmarks/load.py --model mobilenet_v2 --compare-batching --concurrency 1,2,4,8,16 \
	  --seconds 5 --out $(BENCH_OUT)

# The batching auto-tuner (docs/benchmarks.md, "Tuning"): make tune MODEL=mobilenet_v2 P99_MS=50 [APPLY=1]
# searches the serving configuration of $(REPO)/$(MODEL) on a server it starts itself;
# APPLY=1 writes the winner into its config.pbtxt (the old file kept as a backup).
P99_MS ?= 50
APPLY  ?=
.PHONY: tune
tune: $(STAMP)
	$(PY) benchmarks/tune.py --model $(MODEL) --p99-ms $(P99_MS) --repository $(REPO) \
	  --out $(BENCH_OUT) $(if $(APPLY),--apply)

test: $(STAMP) check-tools
	$(PY) -m pytest -m "not heavy and not soak" $(PYTEST_ARGS)

test-all: $(STAMP) check-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# Tools for the deployment checks (tests/deploy/test_deploy.py) that pip cannot install:
# Prometheus/promtool and docker-compose from Debian; a no-op once present.
.PHONY: check-tools up down
check-tools:
	bash docker/install-check-tools.sh

# The compose stack (docs/deploy.md); `make up PROFILE=gpu` adds the GPU server.
COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
PROFILE ?=
up:
	$(COMPOSE) $(if $(PROFILE),--profile $(PROFILE)) up --build --detach
	@echo "gRPC :8001  metrics :8002/metrics  Prometheus 127.0.0.1:9090  Grafana 127.0.0.1:3000"

down:
	$(COMPOSE) --profile gpu down

# A Ray Serve cluster (docs/cluster.md): cluster-up starts a head here and deploys every
# model of $(REPO) (ADDRESS=HEAD:6379 joins that head as a worker instead);
# cluster-down deletes the application and stops this node's Ray processes (only those).
ADDRESS ?=
.PHONY: cluster-up cluster-down
cluster-up: $(STAMP)
	$(PY) -m server.cluster up --model-repository $(REPO) $(if $(ADDRESS),--address $(ADDRESS))

cluster-down: $(STAMP)
	$(PY) -m server.cluster down $(if $(ADDRESS),--address $(ADDRESS)) --stop-node

# GPU host only. gpu-setup adds the `gpu` extra (TensorRT 10, cuda-bindings, onnxruntime-gpu;
# TensorRT's libraries come from NVIDIA's package index) and makes onnxruntime-gpu the
# onnxruntime in use: both wheels install the same `onnxruntime` package, so the CPU one goes.
# gpu-check fails (exit 2) on a machine without a usable GPU.
.PHONY: gpu-setup gpu-check
gpu-setup: $(STAMP)
	$(PY) -m pip install -e '.[export,serve,dev,bench,cluster,gpu]'
	$(PY) -m pip uninstall -y onnxruntime
	$(PY) -m pip install --force-reinstall --no-deps "$$(sed -n 's/.*"\(onnxruntime-gpu[^"]*\)".*/\1/p' pyproject.toml)"

gpu-check: $(STAMP)
	$(PY) -m devtools.gpu_check

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(REPO) results .pytest_cache
