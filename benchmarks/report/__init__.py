"""Markdown reports and charts of the latency and load results."""
