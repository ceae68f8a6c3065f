"""The gRPC frontend: KServe v2 servicer, streaming, transport limits, health probe."""
