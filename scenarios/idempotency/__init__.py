"""Idempotency (the seed's first section): a payment sent twice, across service instances."""
