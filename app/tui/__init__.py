"""The terminal dashboard (Textual)."""
