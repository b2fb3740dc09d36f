"""The worker: validate, run requests under each backend's limits, record results, finalize."""
