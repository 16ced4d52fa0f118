"""Pieces of the benchmark harness; `bench/run.py` is the entry point that ties them together."""
