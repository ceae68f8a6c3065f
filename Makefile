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
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[export,serve,dev]'
	touch $@

# Regenerate protobuf code from protos/*.proto (the generated files are committed);
# grpc_service.proto also gets its gRPC stubs (protos/grpc_service_pb2_grpc.py).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. protos/model_config.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. protos/grpc_service.proto

list: $(STAMP)
	$(PY) -m exporter list

# make export MODEL=mobilenet [WEIGHTS=random|imagenet|pretrained|path]; MODEL=all exports the zoo.
export: $(STAMP)
	$(PY) -m exporter export $(MODEL) --repository $(REPO) $(if $(WEIGHTS),--weights $(WEIGHTS))

# Export, check in process, then serve: classify the photos over gRPC and stop
# the server with SIGTERM (it must drain and exit 0).
DEMO_PORT ?= 18001
DEMO_METRICS_PORT ?= 18002
demo: $(STAMP)
	$(PY) -m exporter export mobilenet_v2 --repository $(REPO) --version 1
	$(PY) -m exporter export efficientnet_lite0 --weights pretrained --repository $(REPO) --version 1
	$(PY) -m exporter predict efficientnet_lite0 --repository $(REPO) $$($(PY) -m exporter.samples)
	$(PY) -m exporter predict mobilenet_v2 --top-k 3 --repository $(REPO) $$($(PY) -m exporter.samples)
	@log=$(REPO)/.demo-server.log; \
	$(PY) -m server --model-repository $(REPO) --host 127.0.0.1 --grpc-port $(DEMO_PORT) \
	  --metrics-port $(DEMO_METRICS_PORT) --metrics-host 127.0.0.1 > $$log 2>&1 & pid=$$!; \
	for i in $$(seq 120); do grep -q '^ready:' $$log && break; \
	  kill -0 $$pid 2>/dev/null || { cat $$log; exit 1; }; sleep 1; done; \
	echo "server ready (pid $$pid): classifying over gRPC"; \
	$(PY) -m client --url 127.0.0.1:$(DEMO_PORT) classify --model efficientnet_lite0 --top-k 3 \
	  $$($(PY) -m exporter.samples); status=$$?; \
	$(PY) -m client --url 127.0.0.1:$(DEMO_PORT) stats --model efficientnet_lite0 || status=1; \
	kill -TERM $$pid; wait $$pid; code=$$?; \
	echo "server stopped with exit code $$code"; \
	[ $$status -eq 0 ] && [ $$code -eq 0 ]

serve: $(STAMP)
	$(PY) -m server --model-repository $(REPO)

test: $(STAMP)
	$(PY) -m pytest -m "not heavy" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(REPO) results .pytest_cache
