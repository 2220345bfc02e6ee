"""Disk images: the cached read-only root image and the sparse persistent upper layer.

Content is checked with ``debugfs`` (e2fsprogs), which reads ext4 images without mounting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.vm import disk
from engine.vm.disk import create_upper_image, root_image_for_dir, tree_fingerprint

DEBUGFS = shutil.which("debugfs") or "/sbin/debugfs"
pytestmark = pytest.mark.skipif(
    not (os.access(DEBUGFS, os.X_OK) and (shutil.which("mkfs.ext4") or os.access("/sbin/mkfs.ext4", os.X_OK))),
    reason="e2fsprogs (mkfs.ext4, debugfs) is not installed",
)


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run([DEBUGFS, "-R", request, str(image)], capture_output=True, text=True, check=True)
    return proc.stdout


def listing(image: Path, path: str = "/") -> set[str]:
    """Names in a directory of the image (``debugfs ls -l``: the name is the last column)."""
    return {line.split()[-1] for line in debugfs(image, f"ls -l {path}").splitlines() if line.strip()}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("msb\n")
    (root / "sh").symlink_to("bin/hello")
    return root


@pytest.fixture
def mkfs_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = disk._run_mkfs

    def counting(args: list[str]) -> None:
        calls.append(args)
        real(args)

    monkeypatch.setattr(disk, "_run_mkfs", counting)
    return calls


def test_root_image_is_built_once_and_reused(tmp_path: Path, rootfs: Path, mkfs_calls: list[list[str]]) -> None:
    cache = tmp_path / "cache"
    image = root_image_for_dir(rootfs, cache)
    assert image.parent == cache / "rootfs" and image.suffix == ".ext4"
    assert {"bin", "etc", "sh", "lost+found"} <= listing(image)
    assert "hello" in listing(image, "/bin")
    assert debugfs(image, "cat /etc/hostname") == "msb\n"
    assert root_image_for_dir(rootfs, cache) == image
    assert len(mkfs_calls) == 1  # the second call was a cache hit
    assert not list((cache / "rootfs").glob("*.tmp"))


def test_a_changed_tree_gets_a_new_image(tmp_path: Path, rootfs: Path, mkfs_calls: list[list[str]]) -> None:
    cache = tmp_path / "cache"
    first = root_image_for_dir(rootfs, cache)
    (rootfs / "etc" / "new.conf").write_text("x=1\n")
    second = root_image_for_dir(rootfs, cache)
    assert second != first and first.exists() and len(mkfs_calls) == 2
    assert "new.conf" in listing(second, "/etc") and "new.conf" not in listing(first, "/etc")


def test_fingerprint_sees_modes_and_counts_entries(rootfs: Path) -> None:
    digest, need, count = tree_fingerprint(rootfs)
    assert count == 5 and need >= 5 * disk.BLOCK
    (rootfs / "etc" / "hostname").chmod(0o600)
    assert tree_fingerprint(rootfs)[0] != digest


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        root_image_for_dir(tmp_path / "missing", tmp_path / "cache")


def test_upper_image_is_sparse_ext4_and_created_once(tmp_path: Path, mkfs_calls: list[list[str]]) -> None:
    upper = tmp_path / "state" / "upper.ext4"
    create_upper_image(upper, 256)
    st = upper.stat()
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < st.st_size // 4  # sparse: only metadata is allocated
    assert "lost+found" in listing(upper)
    create_upper_image(upper, 256)
    assert len(mkfs_calls) == 1 and upper.stat().st_mtime_ns == st.st_mtime_ns
    assert not upper.with_suffix(".tmp").exists()
