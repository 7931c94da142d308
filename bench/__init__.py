"""Benchmarks: each module prints its figures and compares them with its targets."""
