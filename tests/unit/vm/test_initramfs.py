"""The initramfs: a newc archive we can read back, cached by content."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from engine.errors import AgentError
from engine.vm import initramfs
from engine.vm.initramfs import agent_source_version, build_cpio, check_agent_current, ensure_initramfs

FIELDS = ["ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor",
          "rdevminor", "namesize", "check"]  # fmt: skip


def parse_newc(data: bytes) -> dict[str, tuple[dict[str, int], bytes]]:
    """Read a newc archive back: ``{name: (header fields, content)}`` up to the trailer."""
    out: dict[str, tuple[dict[str, int], bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        assert pos % 4 == 0
        fields = {k: int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, k in enumerate(FIELDS)}
        pos += 110
        name = data[pos : pos + fields["namesize"] - 1].decode()
        assert data[pos + fields["namesize"] - 1] == 0
        pos += fields["namesize"]
        pos += -pos % 4
        content = data[pos : pos + fields["filesize"]]
        pos += fields["filesize"]
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        assert name not in out, f"duplicate entry {name}"
        out[name] = (fields, content)


def test_archive_holds_init_dirs_console_and_modules_in_order() -> None:
    agent = b"\x7fELF-agent" * 7  # not a multiple of 4: padding is exercised
    entries = parse_newc(build_cpio(agent, [("virtio_blk.ko", b"m1"), ("ext4.ko", b"m22")]))
    for d in ("dev", "proc", "sys", "lower", "rw", "newroot", "lib", "lib/msb-modules"):
        assert entries[d][0]["mode"] == stat.S_IFDIR | 0o755, d
    console, _ = entries["dev/console"]
    assert console["mode"] == stat.S_IFCHR | 0o600
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    init, content = entries["init"]
    assert init["mode"] == stat.S_IFREG | 0o755 and content == agent
    assert entries["lib/msb-modules/order"][1] == b"virtio_blk.ko\next4.ko\n"
    assert entries["lib/msb-modules/virtio_blk.ko"][1] == b"m1"
    assert entries["lib/msb-modules/ext4.ko"][1] == b"m22"
    inodes = [f["ino"] for f, _ in entries.values()]
    assert len(set(inodes)) == len(inodes) and 0 not in inodes
    assert all(f["uid"] == 0 and f["gid"] == 0 for f, _ in entries.values())


def test_archive_without_modules_has_an_empty_order_file() -> None:
    entries = parse_newc(build_cpio(b"agent", []))
    assert entries["lib/msb-modules/order"][1] == b""
    assert [n for n in entries if n.startswith("lib/msb-modules/")] == ["lib/msb-modules/order"]


def test_ensure_initramfs_is_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = tmp_path / "msb-agent"
    agent.write_bytes(b"agent v1")
    module = tmp_path / "overlay.ko"
    module.write_bytes(b"module")
    calls: list[int] = []
    real = initramfs.build_cpio
    monkeypatch.setattr(initramfs, "build_cpio", lambda *a: calls.append(1) or real(*a))

    first = ensure_initramfs(agent, [module], tmp_path / "cache")
    assert parse_newc(first.read_bytes())["init"][1] == b"agent v1"
    assert ensure_initramfs(agent, [module], tmp_path / "cache") == first
    assert len(calls) == 1  # the second call was a cache hit

    agent.write_bytes(b"agent v2")
    second = ensure_initramfs(agent, [module], tmp_path / "cache")
    assert second != first and len(calls) == 2
    assert not list((tmp_path / "cache" / "initramfs").glob("*.tmp"))


def test_missing_agent_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="not found") as info:
        ensure_initramfs(tmp_path / "nope", [], tmp_path / "cache")
    assert "make agent" in (info.value.hint or "")


def fake_agent(path: Path, version: str) -> Path:
    path.write_text(f"#!/bin/sh\necho 'msb-agent {version} (protocol 1)'\n")
    path.chmod(0o755)
    return path


def test_agent_version_is_the_hash_of_its_sources(tmp_path: Path) -> None:
    (tmp_path / "b.c").write_bytes(b"B")
    (tmp_path / "a.c").write_bytes(b"A")
    (tmp_path / "x.h").write_bytes(b"H")
    assert agent_source_version(tmp_path) == hashlib.sha256(b"ABH").hexdigest()[:16]  # the Makefile's order
    assert agent_source_version(tmp_path / "none") is None


def test_a_stale_agent_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "agent.c").write_bytes(b"int main;")
    current = agent_source_version(src)
    assert current is not None
    check_agent_current(fake_agent(tmp_path / "good", current), src)
    with pytest.raises(AgentError, match="version 0123456789abcdef, but its sources") as info:
        check_agent_current(fake_agent(tmp_path / "old", "0123456789abcdef"), src)
    assert "make agent" in (info.value.hint or "")
    check_agent_current(tmp_path / "missing", src)  # ensure_initramfs reports that one
    check_agent_current(fake_agent(tmp_path / "any", "x"), tmp_path / "no-sources")  # an installed package
