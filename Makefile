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

.PHONY: setup proto export list demo test test-all lint clean

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

demo: $(STAMP)
	$(PY) -m exporter export mobilenet_v2 --repository $(REPO) --version 1
	$(PY) -m exporter export efficientnet_lite0 --weights pretrained --repository $(REPO) --version 1
	$(PY) -m exporter predict efficientnet_lite0 --repository $(REPO) $$($(PY) -m exporter.samples)
	$(PY) -m exporter predict mobilenet_v2 --top-k 3 --repository $(REPO) $$($(PY) -m exporter.samples)

test: $(STAMP)
	$(PY) -m pytest -m "not heavy" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(REPO) results .pytest_cache
