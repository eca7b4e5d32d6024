"""Distributed transactions: 2PC, TCC (the seed's fifth section)."""
