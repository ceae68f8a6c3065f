"""Python client and CLI for the KServe v2 gRPC server (no torch, no tritonclient)."""

from client.client import (
    DEFAULT_URL,
    MAX_MESSAGE_BYTES,
    Classification,
    ClientError,
    InferenceClient,
)

__all__ = ["DEFAULT_URL", "MAX_MESSAGE_BYTES", "Classification", "ClientError", "InferenceClient"]
