"""Baselines the project compares RMT against (same data, same budget)."""
