"""Shared pytest configuration: the local registry fixtures (tests/support)."""

pytest_plugins = ["tests.support.fixtures"]
