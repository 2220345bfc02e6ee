"""Build ``microsandbox/node`` for real (~60 s here: npm brings ~370 Debian packages) and run it,
in a chroot and in a real VM."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.test_build_python import assert_slim, build_and_unpack, chroot_run


def test_node_image(tmp_path: Path) -> None:
    out, config, tree = build_and_unpack("microsandbox/node", tmp_path)
    assert config.config.cmd == ["node"]
    assert (tree / "usr/bin/node").exists() and (tree / "usr/bin/npm").exists()
    assert_slim(tree)
    assert chroot_run(tree, "/usr/bin/node", "-e", "console.log(6 * 7)").strip() == "42"
    assert chroot_run(tree, "/usr/bin/npm", "--version").strip()
    boot_node_image(out, tmp_path)


def boot_node_image(layout: Path, tmp_path: Path) -> None:
    """Store the built image under its SDK name; `node` and `npm` run in a real VM from it."""
    from engine.images.archive import import_layout
    from engine.images.resolve import resolve_root
    from engine.images.store import ImageStore
    from engine.sandbox.engine import Engine

    store = ImageStore(tmp_path / "store")
    import_layout(store, layout, name="docker.io/microsandbox/node:latest", source="build")

    async def run() -> None:
        root = await resolve_root("microsandbox/node", store=store, cache_dir=tmp_path / "cache")
        sb = await Engine().start(root.spec("node-image", memory_mib=512))
        try:
            res = await sb.exec(["sh", "-c", "node -e 'console.log(6 * 7)' && npm --version"], timeout=120)
            assert res.exit_code == 0 and res.stdout.startswith(b"42\n"), res
        finally:
            await sb.kill()

    asyncio.run(run())
