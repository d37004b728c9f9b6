"""Latency and memory measurements (``restkv bench``)."""
