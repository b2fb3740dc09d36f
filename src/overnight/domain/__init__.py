"""The pure core: values, the batch lifecycle, JSONL validation and OpenAI's limits.

Nothing in this package imports a web framework, a database driver or an HTTP client.
"""
