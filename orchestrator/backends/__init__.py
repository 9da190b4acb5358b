"""Isolation backends: one module per sandbox mode, each behind the Backend protocol."""
