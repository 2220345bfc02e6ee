"""Image root filesystems: defaults from the config, User resolution, build once then hit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ImageError
from engine.images.archive import import_layout
from engine.images.oci import ImageConfig
from engine.images.rootfs import ensure_rootfs, image_defaults, resolve_user
from engine.images.store import ImageStore
from tests.unit.images.fakeimg import write_layout

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(
    ("user", "ids"),
    [("app", (1000, 1001)), ("1000", (1000, 1001)), ("app:staff", (1000, 50)), ("4242", (4242, 4242)),
     ("0:50", (0, 50))],
)
def test_resolve_user(tree: Path, user: str, ids: tuple[int, int]) -> None:
    assert resolve_user(tree, user) == ids


def test_unknown_user_is_an_error(tree: Path) -> None:
    with pytest.raises(ImageError, match="not in its /etc/passwd"):
        resolve_user(tree, "nobody-here")
    with pytest.raises(ImageError, match="not in its /etc/group"):
        resolve_user(tree, "app:nogroup")


def test_passwd_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "secret").write_text("app:x:7:7::/:/bin/sh\n")
    os.symlink(tmp_path / "secret", tmp_path / "etc" / "passwd")
    with pytest.raises(ImageError):
        resolve_user(tmp_path, "app")


def test_defaults_from_config(tree: Path) -> None:
    cfg = ImageConfig()
    cfg.config.env = ["PATH=/x:/y", "EMPTY=", "A=b=c", "junk"]
    cfg.config.working_dir = "/srv"
    cfg.config.entrypoint = ["python3", "-u"]
    cfg.config.cmd = ["app.py"]
    cfg.config.user = "app"
    d = image_defaults(cfg, tree)
    assert d.env == {"PATH": "/x:/y", "EMPTY": "", "A": "b=c"}
    assert (d.workdir, d.uid, d.gid) == ("/srv", 1000, 1001)
    assert d.command() == ["python3", "-u", "app.py"]
    assert d.command(["other.py"]) == ["python3", "-u", "other.py"]
    cfg.config.working_dir = "relative"
    assert image_defaults(cfg).workdir == "/"


def test_build_once_then_cache_hit(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    write_layout(tmp_path / "lay", tmp_path, {"etc/passwd": PASSWD, "hello": "world"}, "v1")
    [rec] = import_layout(store, tmp_path / "lay", name="example.test/hello:1")
    first = ensure_rootfs(store, rec, tmp_path / "cache")
    assert first.built and (first.tree / "hello").read_text() == "world" and first.image.stat().st_size > 0
    assert os.stat(tmp_path / "cache" / "image-rootfs").st_mode & 0o777 == 0o700
    second = ensure_rootfs(store, rec, tmp_path / "cache")
    assert not second.built and second.image == first.image


def test_diff_id_mismatch_is_rejected(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    write_layout(tmp_path / "lay", tmp_path, {"a": "b"}, "v1")
    [rec] = import_layout(store, tmp_path / "lay", name="example.test/bad:1")
    cfg = store.config(rec)
    cfg.rootfs.diff_ids = ["sha256:" + "1" * 64]
    import json

    from engine.images.oci import digest_bytes

    data = json.dumps(cfg.wire()).encode()
    store.put_bytes(data, digest_bytes(data))
    bad = rec.model_copy(update={"config": digest_bytes(data)})
    with pytest.raises(ImageError, match="diff_id"):
        ensure_rootfs(store, bad, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "image-rootfs").iterdir() if not p.name.endswith(".lock")] == []
