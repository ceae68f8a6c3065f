"""Shared by every benchmark: the machine record, statistics, tables, model subjects."""
