"""Where requests run: OpenAI-compatible HTTP servers (and, later, embedded models)."""
