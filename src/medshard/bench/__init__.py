"""Benchmarks (`medshard bench ...`): figures printed as JSON, measured side by side."""
