"""Fixtures of the training tests: the tiny dataset lives in tests/conftest.py (shared with tests/sweep)."""
