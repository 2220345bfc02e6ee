"""Bounded caches (engine/cachebound.py): the LRU policy over fakes, then leases and eviction
on real files, across processes where it matters."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.cachebound import (
    BoundedCache,
    CacheEntry,
    CacheRoot,
    Leases,
    bound_mib,
    choose_victims,
    lease_paths,
    rootfs_cache_bound,
    template_cache,
)
from engine.errors import ConfigError

MIB = 1 << 20


def fakes(*spec: tuple[str, int, float]) -> list[CacheEntry]:
    return [CacheEntry(path=Path("/c") / name, bytes=size, last_used=used) for name, size, used in spec]


def test_nothing_goes_while_the_cache_fits() -> None:
    out = choose_victims(fakes(("a", 5, 1), ("b", 5, 2)), 10, lambda e: pytest.fail("removed"))
    assert out.removed == [] and out.freed_bytes == 0


def test_the_least_recently_used_go_first_until_it_fits() -> None:
    gone: list[str] = []

    def remove(e: CacheEntry) -> bool:
        gone.append(e.path.name)
        return True

    out = choose_victims(fakes(("new", 4, 30), ("old", 4, 10), ("mid", 4, 20)), 5, remove)
    assert gone == ["old", "mid"] and out.removed == ["old", "mid"] and out.freed_bytes == 8


def test_an_entry_in_use_is_skipped_and_the_next_goes_instead() -> None:
    entries = fakes(("busy", 4, 10), ("idle", 4, 20), ("new", 4, 30))
    out = choose_victims(entries, 4, lambda e: e.path.name != "busy")
    assert out.removed == ["idle", "new"] and out.in_use == 1


def test_keep_is_never_removed_even_over_the_bound() -> None:
    entries = fakes(("just-built", 9, 0), ("other", 1, 5))
    out = choose_victims(entries, 0, lambda e: True, keep={Path("/c/just-built")})
    assert out.removed == ["other"]


def test_stale_entries_go_whatever_the_size() -> None:
    entries = fakes(("stale", 1, 0), ("fresh", 1, 95))
    out = choose_victims(entries, 100, lambda e: True, max_age_s=50, now=100)
    assert out.removed == ["stale"]


@pytest.mark.parametrize(("raw", "want"), [("", 7), ("12", 12), ("-3", 0), ("lots", 7)])
def test_bound_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, want: int) -> None:
    monkeypatch.setenv("MSB_X_MIB", raw)
    assert bound_mib("MSB_X_MIB", 7) == want


# ---------------------------------------------------------------------------------- real files


def cache_with(tmp_path: Path, sizes: dict[str, int], bound: int) -> BoundedCache:
    root = tmp_path / "c"
    root.mkdir(exist_ok=True)
    for i, (name, size) in enumerate(sizes.items()):
        (root / name).mkdir()
        (root / name / "data").write_bytes(b"x" * size)
        stamp = time.time() - 100 + i  # in the order given: the first is the least recently used
        os.utime(root / name, (stamp, stamp))
    return BoundedCache("test", [CacheRoot(root, "dir")], bound)


def test_enforce_evicts_to_the_bound_and_reports_freed_bytes(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, {"a": MIB, "b": MIB, "c": MIB}, 2 * MIB + (64 << 10))
    out = cache.enforce()
    assert out.removed == ["a"] and out.freed_bytes >= MIB
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["b", "c"]  # no .use, no .evict left


def test_a_leased_entry_survives_and_goes_once_released(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, {"a": MIB, "b": MIB}, 0)
    lease = cache.lease(tmp_path / "c" / "a")
    assert lease is not None and cache.in_use(tmp_path / "c" / "a")
    out = cache.enforce()
    assert out.removed == ["b"] and out.in_use == 1 and (tmp_path / "c" / "a" / "data").exists()
    assert cache.usage().in_use == 1
    lease.release()
    assert cache.enforce().removed == ["a"]


def test_a_lease_held_by_another_process_protects_the_entry(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, {"a": MIB}, 0)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from engine.cachebound import BoundedCache, CacheRoot
        cache = BoundedCache("t", [CacheRoot(Path({str(tmp_path / "c")!r}), "dir")], 0)
        lease = cache.lease(Path({str(tmp_path / "c" / "a")!r}))
        print("held" if lease else "gone", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert cache.enforce().in_use == 1 and (tmp_path / "c" / "a").exists()
    finally:
        holder.communicate("", timeout=30)
    assert cache.enforce().removed == ["a"]


def test_a_lease_on_an_evicted_entry_is_refused(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, {"a": 10}, 0)
    assert cache.remove(tmp_path / "c" / "a")
    assert cache.lease(tmp_path / "c" / "a") is None


def test_file_entries_and_what_is_not_an_entry(tmp_path: Path) -> None:
    cache = rootfs_cache_bound(tmp_path)
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "image-rootfs" / "k1" / "tree").mkdir(parents=True)
    (tmp_path / "image-rootfs" / "k2.building").mkdir()
    (tmp_path / "image-rootfs" / "k1.lock").write_bytes(b"")
    (tmp_path / "rootfs" / "abc.ext4").write_bytes(b"x" * 4096)
    (tmp_path / "rootfs" / "x.ext4.tmp").write_bytes(b"")
    (tmp_path / "rootfs" / "evil.ext4").symlink_to("/etc/passwd")
    assert sorted(e.path.name for e in cache.entries()) == ["abc.ext4", "k1"]
    assert cache.entry_of(tmp_path / "image-rootfs" / "k1" / "tree") == tmp_path / "image-rootfs" / "k1"
    assert cache.entry_of(tmp_path / "rootfs" / "abc.ext4") == tmp_path / "rootfs" / "abc.ext4"
    assert cache.entry_of(tmp_path / "rootfs-dirs" / "busybox") is None
    assert cache.entry_of(tmp_path / "image-rootfs" / "k2.building" / "x") is None
    cache.bound_bytes = 0
    assert sorted(cache.enforce().removed) == ["abc.ext4", "k1"]
    assert (tmp_path / "image-rootfs" / "k2.building").exists() and Path("/etc/passwd").exists()


def test_lease_paths_leases_the_entries_a_sandbox_runs_from(tmp_path: Path) -> None:
    (tmp_path / "image-rootfs" / "k1" / "tree").mkdir(parents=True)
    (tmp_path / "templates" / "t1").mkdir(parents=True)
    leases = Leases()
    lease_paths(tmp_path, [tmp_path / "image-rootfs" / "k1" / "root.ext4", tmp_path / "elsewhere"], leases)
    assert leases.entries() == [tmp_path / "image-rootfs" / "k1"]
    assert rootfs_cache_bound(tmp_path).in_use(tmp_path / "image-rootfs" / "k1")
    assert not template_cache(tmp_path).in_use(tmp_path / "templates" / "t1")
    leases.release()
    leases.release()  # idempotent
    assert not rootfs_cache_bound(tmp_path).in_use(tmp_path / "image-rootfs" / "k1")


def test_lease_paths_of_an_evicted_entry_says_start_again(tmp_path: Path) -> None:
    (tmp_path / "image-rootfs").mkdir()
    with pytest.raises(ConfigError, match="start the sandbox again"):
        lease_paths(tmp_path, [tmp_path / "image-rootfs" / "gone" / "root.ext4"], Leases())


async def test_a_sandbox_holds_its_root_until_it_stops(tmp_path: Path) -> None:
    from engine.sandbox.engine import Engine
    from engine.sandbox.spec import SandboxSpec
    from engine.vm.fake import FakeBackend
    from tests.unit.sandbox.test_sandbox import KERNEL

    cache_dir = tmp_path / "cache"
    entry = cache_dir / "image-rootfs" / "k1"
    (entry / "tree").mkdir(parents=True)
    engine = Engine(backend=FakeBackend(tmp_dir=tmp_path), kernel=KERNEL, accel="tcg", cache_dir=cache_dir)
    async with asyncio.timeout(30):
        sb = await engine.start(SandboxSpec(name="sb", rootfs=entry / "tree"))
    try:
        assert sb.leases.entries() == [entry]
        cache = rootfs_cache_bound(cache_dir)
        cache.bound_bytes = 0
        assert cache.enforce().in_use == 1 and entry.exists()
    finally:
        await sb.stop()
    assert not rootfs_cache_bound(cache_dir).in_use(entry)
