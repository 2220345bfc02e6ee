"""Build ``microsandbox/python`` for real from the host's Debian mirror (~35 s here), unpack it
with the store's own layer applier and run its Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from engine.images.build import build_base_image
from engine.images.layers import apply_layer
from engine.images.layout import LayoutReader
from engine.images.oci import (
    LAYER_COMPRESSION,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    ImageConfig,
    parse_config,
    parse_manifest,
)

CHROOT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def build_and_unpack(name: str, tmp_path: Path) -> tuple[Path, ImageConfig, Path]:
    """Build ``name`` into a layout, apply its layer, check the diff_id: ``(layout, config, tree)``."""
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is missing: apt-get install mmdebstrap (scripts/bootstrap.sh installs it)")
    started = time.monotonic()
    out, ref = build_base_image(name, tmp_path / "layout", log=lambda _line: None)
    print(f"built {name} in {time.monotonic() - started:.1f} s")
    reader = LayoutReader(out)
    [(got_ref, desc)] = list(reader.images())
    assert got_ref == ref == "latest"
    manifest = parse_manifest(reader.read_blob(desc, MAX_MANIFEST_BYTES))
    config = parse_config(reader.read_blob(manifest.config, MAX_CONFIG_BYTES))
    [layer] = manifest.layers
    stats = apply_layer(reader.blob_path(layer.digest), LAYER_COMPRESSION[layer.media_type], tmp_path / "tree")
    assert config.rootfs.diff_ids == [stats.diff_id]
    return out, config, tmp_path / "tree"


def chroot_run(tree: Path, *argv: str) -> str:
    if os.geteuid() != 0:
        pytest.skip("running the image's binaries needs chroot (root)")
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    res = subprocess.run([chroot, str(tree), *argv], env=CHROOT_ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def assert_slim(tree: Path) -> None:
    """No host leftovers, caches, docs or device nodes in the image."""
    assert not (tree / "etc/resolv.conf").exists() and not (tree / "etc/hostname").exists()
    assert not list((tree / "var/cache/apt/archives").glob("*.deb"))
    assert not list((tree / "var/lib/apt/lists").glob("*_Packages*"))
    assert not [p for p in (tree / "var/log").rglob("*") if p.is_file()]
    assert (tree / "dev").is_dir() and not list((tree / "dev").iterdir())
    docs = [p for p in (tree / "usr/share/doc").rglob("*") if p.name != "copyright" and not p.is_symlink()]
    assert not [p for p in docs if p.is_file()]
    assert not (tree / "usr/share/man").exists() or not any((tree / "usr/share/man").rglob("*.gz"))


def test_python_image(tmp_path: Path) -> None:
    out, config, tree = build_and_unpack("microsandbox/python", tmp_path)
    assert config.config.cmd == ["python3"]
    assert config.config.env and "PYTHONUNBUFFERED=1" in config.config.env
    assert (config.config.labels or {})["msb.debian.suite"] == "bookworm"
    assert (tree / "usr/bin/python3").exists() and (tree / "usr/bin/python").exists()
    assert (tree / "usr/bin/pip").exists()
    assert (tree / "usr/lib/python3/dist-packages/pip/__init__.py").is_file()
    assert not list(tree.glob("usr/lib/python3*/EXTERNALLY-MANAGED"))
    assert_slim(tree)
    if shutil.which("skopeo"):
        subprocess.run(["skopeo", "inspect", f"oci:{out}:latest"], check=True, capture_output=True, timeout=60)
    got = chroot_run(tree, "/usr/bin/python3", "-c", "import pip, ssl, venv, sqlite3; print(pip.__version__)")
    assert got.strip()
    assert "pip" in chroot_run(tree, "/usr/bin/python3", "-m", "pip", "--version")
    assert chroot_run(tree, "/bin/sh", "-c", "python -c 'print(1+1)'").strip() == "2"
    boot_python_image(out, tmp_path)


def boot_python_image(layout: Path, tmp_path: Path) -> None:
    """Store the built image under its SDK name and run Python in a real VM from it."""
    import asyncio

    from engine.images.archive import import_layout
    from engine.images.resolve import resolve_root
    from engine.images.store import ImageStore
    from engine.sandbox.engine import Engine

    store = ImageStore(tmp_path / "store")
    [rec] = import_layout(store, layout, name="docker.io/microsandbox/python:latest", source="build")
    assert rec.ref.short() == "microsandbox/python:latest"

    async def run() -> None:
        root = await resolve_root("microsandbox/python", store=store, cache_dir=tmp_path / "cache")
        assert root.defaults.env.get("PYTHONUNBUFFERED") == "1"
        sb = await Engine().start(root.spec("py-image", memory_mib=512))
        try:
            res = await sb.exec(["python3", "-c", "import ssl, sqlite3; print(6 * 7)"], timeout=60)
            assert (res.exit_code, res.stdout) == (0, b"42\n"), res
            pip = await sb.exec(["python3", "-m", "pip", "--version"], timeout=60)
            assert pip.exit_code == 0 and b"pip" in pip.stdout
            # as the guide types them: `python`, `pip`, through a shell
            res = await sb.exec(["sh", "-c", "python -c 'print(1+1)' && pip --version"], timeout=60)
            assert res.exit_code == 0 and res.stdout.startswith(b"2\npip "), res
        finally:
            await sb.kill()

    asyncio.run(run())
