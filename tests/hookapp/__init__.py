"""A test-only app whose models carry model hooks (tests/test_hooks.py)."""
