"""Benchmarks that print ratios against raw ceilings measured in the same run.

Run each as a module from the repository's root (``.venv/bin/python -m bench.messaging``);
``make bench`` runs them all."""
