"""Dynamic batching: the queue per model, its counters and per-client shares."""
