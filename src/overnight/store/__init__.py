"""Metadata storage: files, batches and per-line results."""
