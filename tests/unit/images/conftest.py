"""Fixtures shared by the layer tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.images.layer_helpers import Layers, outside_untouched


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers(tmp_path)


@pytest.fixture
def sentinel(layers: Layers) -> Iterator[Layers]:
    """``outside/secret`` and ``outside/etc/passwd`` exist; the test body must leave them be."""
    with outside_untouched(layers):
        yield layers
