"""Shared by every benchmark: the machine record, latency statistics, Markdown tables, the model subjects."""
