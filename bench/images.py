"""Image benchmarks: pull vs skopeo from a local registry, cached pull, rootfs build and hit.

Everything runs against Debian's docker-registry started on 127.0.0.1 for this run, with a
~100 MB five-layer image made for it (tests/support/images.big_image), so the ratio to
skopeo compares two clients moving the same bytes over the same loopback in the same minute.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.images.pull import pull_image
from engine.images.registry import OrasRegistry
from engine.images.rootfs import ensure_rootfs
from engine.images.store import ImageStore
from tests.support.images import big_image, multi_layer_whiteouts
from tests.support.registry import LocalRegistry, push_layout


def _stats(xs: list[float]) -> dict[str, Any]:
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 1), "min": round(xs[0], 1), "max": round(xs[-1], 1), "n": len(xs)}


def _skopeo_pull(ref: str, dest: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--src-no-creds",
         f"docker://{ref}", f"oci:{dest}:bench"],
        check=True, capture_output=True,
    )  # fmt: skip
    return (time.perf_counter() - t0) * 1000


async def _msb_pull(ref: str, root: Path) -> tuple[float, ImageStore]:
    store = ImageStore(root)
    t0 = time.perf_counter()
    await pull_image(ref, store, OrasRegistry(use_stored_credentials=False))
    return (time.perf_counter() - t0) * 1000, store


def _python_rootfs(work: Path) -> dict[str, Any]:
    """Rootfs build and hit for the real microsandbox/python image (built offline if missing)."""
    from engine.images.resolve import build_offline

    store = ImageStore.default()
    rec = store.get("docker.io/microsandbox/python:latest")
    if rec is None:
        rec = build_offline("microsandbox/python", store)
    cache = work / "rootfs-python"
    built = ensure_rootfs(store, rec, cache)
    hits = [ensure_rootfs(store, rec, cache).seconds * 1000 for _ in range(10)]
    label = f"microsandbox/python ({rec.size / 1e6:.0f} MB, {len(store.manifest(rec).layers)} layer)"
    return {label: {"build_ms": _stats([built.seconds * 1000]), "cache_hit_ms": _stats(hits)}}


async def run(runs: int = 5) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="msb-bench-images-"))
    try:
        (work / "registry").mkdir()
        with LocalRegistry(workdir=work / "registry") as reg:
            big = big_image(work / "big", total_mb=135, layers=5)  # ≈ 100 MB once gzipped
            pushed = push_layout(big.layout, big.ref, reg, "bench/big:v1")
            size = sum(d.size for d in big.layers)
            skopeo_ms: list[float] = []
            msb_ms: list[float] = []
            for i in range(runs):  # interleaved, so drift hits both alike
                skopeo_ms.append(_skopeo_pull(pushed.ref, work / f"sk{i}"))
                shutil.rmtree(work / f"sk{i}")
                ms, _ = await _msb_pull(pushed.ref, work / f"st{i}")
                msb_ms.append(ms)
                shutil.rmtree(work / f"st{i}")
            _, store = await _msb_pull(pushed.ref, work / "store")
            cached = []
            for _ in range(20):
                t0 = time.perf_counter()
                res = await pull_image(pushed.ref, store, OrasRegistry(use_stored_credentials=False))
                cached.append((time.perf_counter() - t0) * 1000)
                assert res.up_to_date
            env = {**os.environ, "MSB_CACHE_DIR": str(work / "cli-cache")}
            shutil.copytree(work / "store", work / "cli-cache" / "images")
            cli = []
            for _ in range(5):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "engine.cli.main", "pull", "-q", pushed.ref], env=env,
                               check=True, capture_output=True)  # fmt: skip
                cli.append((time.perf_counter() - t0) * 1000)

            rootfs: dict[str, Any] = {}
            wh = multi_layer_whiteouts(work / "wh")
            wh_pushed = push_layout(wh.layout, wh.ref, reg, "bench/whiteouts:v1")
            await pull_image(wh_pushed.ref, store, OrasRegistry(use_stored_credentials=False))
            for label, ref in (("big (100 MB, 5 layers)", pushed.ref), ("busybox + 3 layers", wh_pushed.ref)):
                rec = store.get(ref)
                assert rec is not None
                builds, hits = [], []
                for i in range(3):
                    cache = work / f"rootfs-{label[:3]}-{i}"
                    built = ensure_rootfs(store, rec, cache)
                    builds.append(built.seconds * 1000)
                    for _ in range(10):
                        hits.append(ensure_rootfs(store, rec, cache).seconds * 1000)
                    shutil.rmtree(cache)
                rootfs[label] = {"build_ms": _stats(builds), "cache_hit_ms": _stats(hits)}
            rootfs.update(_python_rootfs(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    big_rootfs = rootfs["big (100 MB, 5 layers)"]
    return {
        "image_bytes": size,
        "layers": len(big.layers),
        "msb_pull_ms": _stats(msb_ms),
        "skopeo_copy_ms": _stats(skopeo_ms),
        "pull_vs_skopeo_ratio": round(statistics.median(msb_ms) / statistics.median(skopeo_ms), 2),
        "cached_pull_ms": _stats(cached)["p50"],
        "cached_pull": _stats(cached),
        "cached_pull_cli_ms": _stats(cli),
        "rootfs_build_ms": big_rootfs["build_ms"]["p50"],
        "rootfs_cache_hit_ms": big_rootfs["cache_hit_ms"]["p50"],
        "rootfs": rootfs,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(runs=2)), indent=2))
