"""Measures used in tests, benchmarks and docs."""
