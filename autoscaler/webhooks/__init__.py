"""Webhooks: the outbox's events delivered to receivers (docs/webhooks.md)."""
