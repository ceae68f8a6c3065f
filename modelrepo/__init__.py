"""The model repository contract: what the exporter writes and the server reads (Triton layout)."""
