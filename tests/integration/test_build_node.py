"""Build ``microsandbox/node`` for real (~60 s here: npm brings ~370 Debian packages) and run it."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_build_python import assert_slim, build_and_unpack, chroot_run


def test_node_image(tmp_path: Path) -> None:
    _, config, tree = build_and_unpack("microsandbox/node", tmp_path)
    assert config.config.cmd == ["node"]
    assert (tree / "usr/bin/node").exists() and (tree / "usr/bin/npm").exists()
    assert_slim(tree)
    assert chroot_run(tree, "/usr/bin/node", "-e", "console.log(6 * 7)").strip() == "42"
    assert chroot_run(tree, "/usr/bin/npm", "--version").strip()
