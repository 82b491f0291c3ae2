"""Benchmarks: scripts that print numbers (run them with .venv/bin/python benchmarks/NAME.py)."""
