"""Eventual consistency through messages: the outbox, transactional (half) messages and
best-effort notification."""
