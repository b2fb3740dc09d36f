"""`overnight submit` and `overnight batches`: a client for any OpenAI-compatible Batch API.

It imports nothing of the server (no store, engine, http or services): only the pure `overnight.domain`
helpers and the `openai` SDK. See docs/submit.md.
"""
