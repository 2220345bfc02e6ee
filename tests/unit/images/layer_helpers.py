"""Building layer tars for the ``apply_layer`` tests, and a sentinel directory they must not touch."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zstandard

from engine.images.layers import LayerStats, apply_layer

MTIME = 1_600_000_000
Entry = tuple[tarfile.TarInfo, bytes | None]


def tar_info(name: str, kind: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, MTIME
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return tar_info(name, tarfile.REGTYPE, mode, size=len(data), **kw), data


def dirent(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return tar_info(name, tarfile.DIRTYPE, mode, **kw), None


def sym(name: str, target: str) -> Entry:
    return tar_info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def hard(name: str, target: str) -> Entry:
    return tar_info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def node(name: str, kind: bytes, mode: int = 0o600, **kw: object) -> Entry:
    return tar_info(name, kind, mode, **kw), None


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(raw: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


class Layers:
    """Writes layer blobs under tmp_path and applies them to ``root``, next to ``outside``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.outside = tmp_path / "outside"
        self.count = 0

    def blob(self, raw: bytes, compression: str | None = None) -> Path:
        self.count += 1
        path = self.tmp / f"layer{self.count}.blob"
        path.write_bytes(compress(raw, compression))
        return path

    def apply(self, entries: list[Entry], compression: str | None = None, **kw: object) -> LayerStats:
        return apply_layer(self.blob(tar_bytes(entries), compression), compression, self.root, **kw)  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under ``root`` with its mode and content (file bytes, link target or "dir")."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            body: bytes | str = os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, body)
    return out


@contextmanager
def outside_untouched(layers: Layers) -> Iterator[Layers]:
    """``outside/secret`` and ``outside/etc/passwd`` exist; the body must leave them be."""
    (layers.outside / "etc").mkdir(parents=True)
    (layers.outside / "secret").write_bytes(b"top secret")
    (layers.outside / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    before = snapshot(layers.outside)
    yield layers
    assert snapshot(layers.outside) == before


def xattrs_supported(path: Path) -> bool:
    probe = path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()
