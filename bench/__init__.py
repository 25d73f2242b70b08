"""Benchmarks that print JSON figures (not timed tests). See ``bench/README.md``."""
