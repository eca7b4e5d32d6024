"""Ordering (the seed's sixth section): per-order sequence across workers — the hash ring first."""
