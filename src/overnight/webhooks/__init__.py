"""Webhooks: signing and sending the batch events the store's outbox holds (docs/webhooks.md)."""
