"""Ingest pipeline: parse, validate, preprocess, render."""
