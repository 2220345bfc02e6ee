"""Test infrastructure shared by the test suites: a local registry, skopeo, fabricated images.

Errors::

    InfraError                a tool or prepared file the tests need is missing or failed
    ├── RegistryStartError    docker-registry did not come up (its log tail inside)
    └── SkopeoError           skopeo exited non-zero (command and stderr inside)
"""

from __future__ import annotations


class InfraError(RuntimeError):
    """The test infrastructure is missing something or a tool of it failed."""
