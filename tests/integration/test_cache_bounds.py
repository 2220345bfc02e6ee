"""A running sandbox's cache entries (its template, its root filesystem) survive eviction
pressure, on every backend, and are free to go once it stops (engine/cachebound.py)."""

from __future__ import annotations

import os

from engine.cachebound import all_caches, choose_victims
from engine.images.resolve import resolve_root
from engine.sandbox.engine import Engine


async def test_entries_in_use_survive_eviction_pressure(engine: Engine, backend_name: str) -> None:
    root = await resolve_root("busybox")
    sb = await engine.start(root.spec("cb-" + os.urandom(3).hex(), memory_mib=256))
    try:
        held = set(sb.leases.entries())
        assert any(p.parent.name == "image-rootfs" for p in held), held
        if backend_name == "qemu" and sb.start_info.kind == "restore":
            assert any(p.parent.name == "templates" for p in held), held
        for cache in all_caches(engine.cache_dir):
            mine = [e for e in cache.entries() if e.path in held]
            # a bound of 0 over this sandbox's entries alone: others' caches are left as they are
            out = choose_victims(mine, 0, lambda e: cache.remove(e.path))  # noqa: B023 (called here, now)
            assert out.removed == [] and out.in_use == len(mine)
        assert all(p.exists() for p in held)
        r = await sb.exec(["sh", "-c", "echo alive; ls /bin/sh"])
        assert r.exit_code == 0 and r.stdout.startswith(b"alive"), r
    finally:
        await sb.kill()
    assert not any(c.in_use(p) for c in all_caches(engine.cache_dir) for p in held if c.entry_of(p) == p)
