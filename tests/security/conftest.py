"""Fixtures of the attack suite: the busybox image, a tiny root filesystem directory the
operator allows, and one real server per test module (production mode, keys for t1, t2, *)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import paths
from tests.security import server_proc
from tests.security.server_proc import ServerProc

FILE_LIMIT = 64 << 10
"""``MSB_MAX_FILE_BYTES`` of the module server: small, so an over-limit write is cheap."""


@pytest.fixture(scope="session")
def busybox() -> str:
    """``busybox`` in the user's image store (built offline once)."""
    return server_proc.busybox_image()


@pytest.fixture(scope="module")
def allowed_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the static busybox tree (scripts/build-test-rootfs.sh) that the operator allows
    as an image directory (``MSB_ALLOWED_IMAGE_DIRS``)."""
    src = paths.cache_dir() / "rootfs-dirs" / "busybox"
    if not (src / ".complete").exists():
        pytest.fail(f"{src} is missing: run `make setup` (scripts/build-test-rootfs.sh)")
    dest = tmp_path_factory.mktemp("allowed") / "rootfs"
    shutil.copytree(src, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, busybox: str, allowed_rootfs: Path) -> Iterator[ServerProc]:
    """The module's server on a fresh state directory, one directory image allowed and a small
    file-write limit; other limits at their defaults."""
    base = tmp_path_factory.mktemp("server")
    env = {"MSB_ALLOWED_IMAGE_DIRS": str(allowed_rootfs), "MSB_MAX_FILE_BYTES": str(FILE_LIMIT)}
    yield from server_proc.served(base / "state", base / "server.log", env=env)


@pytest.fixture(scope="module")
def t1(srv: ServerProc) -> str:
    """A key for namespace t1 only."""
    return srv.keygen("t1")


@pytest.fixture(scope="module")
def t2(srv: ServerProc) -> str:
    """A key for namespace t2 only."""
    return srv.keygen("t2")


@pytest.fixture(scope="module")
def t1_used(srv: ServerProc, t1: str, busybox: str) -> str:
    """Namespace t1 as a tenant leaves it: one persistent sandbox defined, started once and
    stopped. (On the old layout that is what made the namespace directory — Sandboxfile and
    ``.menv/`` — that a ``.:/ns`` volume then exposed.) Returns that sandbox's name."""
    name = server_proc.uniq("used")
    doc = server_proc.sandbox_start(srv, t1, "t1", name, image=busybox)
    assert "result" in doc, f"{doc}\n{srv.log_tail()}"
    server_proc.sh(srv, t1, "t1", name, "echo mine > /root/mine.txt")
    server_proc.sandbox_stop(srv, t1, "t1", name)
    return name
