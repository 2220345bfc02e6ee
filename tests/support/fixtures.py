"""pytest fixtures for a local registry; load with ``pytest_plugins = ["tests.support.fixtures"]``.

Both registries live for the whole session (starting one takes ~50 ms, but a session-wide one
keeps the logs of every push in one place); tests keep out of each other's way with ``repo``,
a repository name unique to the test.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator

import pytest

from tests.support.registry import LocalRegistry

_TOOLS = {"docker-registry": "docker-registry", "skopeo": "skopeo", "htpasswd": "apache2-utils"}


def _require_tools(*names: str) -> None:
    missing = [f"{n} (Debian package {_TOOLS[n]})" for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make setup`", pytrace=False)


def _serve(tmp_path_factory: pytest.TempPathFactory, *, auth: bool) -> Iterator[LocalRegistry]:
    _require_tools("docker-registry", "skopeo", *(["htpasswd"] if auth else []))
    workdir = tmp_path_factory.mktemp("auth-registry" if auth else "registry")
    reg = LocalRegistry(auth=auth, workdir=workdir)  # workdir kept by pytest: the log survives
    try:
        yield reg.start()
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry on 127.0.0.1 (plain HTTP), shared by the session."""
    yield from _serve(tmp_path_factory, auth=False)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry behind htpasswd basic auth; ``.username``, ``.password``, ``.creds`` log in."""
    yield from _serve(tmp_path_factory, auth=True)


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, e.g. ``msb-test/test-push-index-3f9a1c``."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:48].strip("-")
    return f"msb-test/{slug or 't'}-{secrets.token_hex(3)}"
