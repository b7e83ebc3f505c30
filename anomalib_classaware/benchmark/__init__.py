"""Benchmark harness: unified vs separate multi-class anomaly detection, CSV/Markdown/PNG reports."""
