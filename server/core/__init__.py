"""The data plane and what it needs: what every frontend calls.

``SURFACE`` is the core's public face: the modules a frontend (gRPC, HTTP, the cluster
replica) or the wiring at the top of ``server/`` may import. The rest (batching glue,
images, explanations, ensembles, traces, statistics) is the core's own and may change
without a frontend noticing; ``tests/test_layering.py`` holds the frontends to this list.
"""

SURFACE = frozenset(
    {
        "control",  # model control: who may load and unload
        "converters",  # protobuf <-> the request and answer types, for protobuf edges
        "dataplane",  # DataPlane: every inference, metadata and statistics call
        "decoding",  # lenient text decoding of names for error messages
        "errors",  # the error family and its gRPC codes / HTTP statuses
        "grpc_edge",  # every gRPC listener's registration (lenient decoding) and TLS
        "load_request",  # a model load's parameters (config override, files)
        "memory",  # the allocator trimmer the server runs between requests
        "messages",  # InferRequest / InferResponse: the one request and answer type
        "models",  # ModelManager and model-name checks
        "request_caps",  # per-request limits a frontend checks before decoding
        "shared_memory",  # the shared-memory parameter names both protocols carry
        "tensors",  # element codecs shared by the wire formats
        "wiring",  # build_core: metrics -> model manager -> data plane
    }
)
