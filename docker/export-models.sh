#!/bin/sh
# Fill a model repository with the default models: the compose stack's one-shot
# `exporter` service (docker/exporter.Dockerfile), also usable on the host.
#
#   export-models [REPOSITORY]        default /models
#   MODELS="NAME[:WEIGHTS] ..."       default: mobilenet_v2 efficientnet_lite0:pretrained lenet5:pretrained
#   FORCE=1                           re-export models whose version 1 already exists
#
# A model whose version 1 exists is kept, so a second `docker compose up` starts
# in seconds and never replaces files a running server reads.
set -eu

repo="${1:-/models}"
models="${MODELS:-mobilenet_v2 efficientnet_lite0:pretrained lenet5:pretrained}"
python="${PYTHON:-python}"

for entry in $models; do
    name="${entry%%:*}"
    weights=""
    case "$entry" in *:*) weights="${entry#*:}" ;; esac
    if [ -f "$repo/$name/1/model.onnx" ] && [ "${FORCE:-0}" != 1 ]; then
        echo "$name: $repo/$name/1 exists, kept (FORCE=1 re-exports)"
        continue
    fi
    set -- "$python" -m exporter export "$name" --repository "$repo" --version 1
    if [ -n "$weights" ]; then
        set -- "$@" --weights "$weights"
    fi
    "$@"
done
echo "model repository $repo is ready"
