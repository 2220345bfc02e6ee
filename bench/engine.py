"""Engine benchmarks (issue: engine core). Measures, in one run and per available kernel:

- cold start → first exec result (``Engine.start`` + ``exec(["true"])``), ≥ 10 runs;
- exec round trip of ``true``, ≥ 200 runs;
- stdout throughput (100 MiB through ``head -c``);
- host RSS of an idle 512 MiB sandbox;
- floors: a raw QEMU boot of the same kernel to a trivial ``/init``, and host
  ``subprocess.run(["true"])``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from engine import paths
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec
from engine.vm.backend import VmSpec
from engine.vm.cmdline import kernel_cmdline
from engine.vm.initramfs import build_cpio
from engine.vm.kernel import Kernel
from engine.vm.qemu import find_qemu

HERE = Path(__file__).resolve().parent
BUSYBOX = paths.cache_dir() / "rootfs-dirs" / "busybox"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, rounded to 0.01."""
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[idx], 2)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "n": len(values)}


async def cold_starts(engine: Engine, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        sb = await engine.start(SandboxSpec(name=f"bench-cold-{i}", rootfs=BUSYBOX))
        res = await sb.exec(["true"])
        out.append((time.perf_counter() - t0) * 1000)
        assert res.exit_code == 0
        await sb.kill()
    return out


async def warm_numbers(engine: Engine, rtt_runs: int) -> dict[str, Any]:
    sb = await engine.start(SandboxSpec(name="bench-warm", rootfs=BUSYBOX, memory_mib=512))
    try:
        for _ in range(10):
            await sb.exec(["true"])
        rtts = []
        for _ in range(rtt_runs):
            t0 = time.perf_counter()
            await sb.exec(["true"])
            rtts.append((time.perf_counter() - t0) * 1000)
        size = 100 << 20
        t0 = time.perf_counter()
        got = 0
        async for chunk in sb.exec_stream(["dd", "if=/dev/zero", "bs=1M", f"count={size >> 20}"]):
            if chunk.stream == "stdout":  # dd reports its counts on stderr
                got += len(chunk.data)
        secs = time.perf_counter() - t0
        assert got == size, got
        rtt_pings = []
        for _ in range(200):
            rtt_pings.append(await sb.client.ping(b"x" * 100) * 1000)
        # idle RSS: after the work above settles, as a user's idle sandbox would be
        fresh = await engine.start(SandboxSpec(name="bench-idle", rootfs=BUSYBOX, memory_mib=512))
        await fresh.exec(["true"])
        await asyncio.sleep(1.0)  # let the guest go idle before reading RSS
        idle = (await fresh.metrics()).host_rss_mib
        await fresh.kill()
        return {
            "exec_rtt_ms": summary(rtts),
            "channel_rtt_ms": summary(rtt_pings),
            "stdout_mb_s": round(size / secs / 1e6, 1),
            "idle_rss_mib": idle,
        }
    finally:
        await sb.kill()


def floor_init(cache: Path) -> Path:
    """Build (once) a cpio whose /init only announces itself and powers off."""
    src = HERE / "floor_init.c"
    out = cache / "bench" / "floor-init.cpio"
    binary = cache / "bench" / "floor-init"
    if out.exists() and out.stat().st_mtime > src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(src)], check=True)
    out.write_bytes(build_cpio(binary.read_bytes(), []))
    return out


async def raw_boot(kernel: Kernel, initrd: Path, accel: str, runs: int) -> list[float]:
    qemu = find_qemu()
    times = []
    for _ in range(runs):
        spec = VmSpec(name="floor", kernel=kernel.path, initrd=initrd, root_image=initrd,
                      accel=accel, run_dir=Path("/tmp"), memory_mib=512,  # type: ignore[arg-type]
                      kernel_args=tuple(kernel.boot_args(accel)))  # type: ignore[arg-type]
        cmdline = kernel_cmdline(spec)
        machine = "microvm,acpi=on,pit=off,pic=off,rtc=on"
        accel_args = ["-accel", "tcg", "-cpu", "max"] if accel == "tcg" else ["-accel", "kvm", "-cpu", "host"]
        argv = [qemu, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-M", machine, *accel_args,
                "-m", "512", "-kernel", str(kernel.path), "-initrd", str(initrd), "-append", cmdline,
                "-serial", "stdio"]
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stdin=asyncio.subprocess.DEVNULL)
        assert proc.stdout is not None
        buf = b""
        while b"@MSB-INIT@" not in buf:
            data = await asyncio.wait_for(proc.stdout.read(4096), 30)
            if not data:
                raise RuntimeError(f"floor boot ended without reaching init: {buf[-500:]!r}")
            buf += data
        times.append((time.perf_counter() - t0) * 1000)
        proc.kill()
        await proc.wait()
    return times


def subprocess_floor(runs: int = 200) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["true"], check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def bench_kernel(kernel: Kernel, cold_runs: int, rtt_runs: int) -> dict[str, Any]:
    engine = Engine(backend="qemu", kernel=kernel, templates=False)  # cold boots of each kernel
    assets = await engine.prepare()
    cold = await cold_starts(engine, cold_runs)
    warm = await warm_numbers(engine, rtt_runs)
    floor = await raw_boot(kernel, floor_init(engine.cache_dir), assets.accel.accel, max(5, cold_runs // 2))
    return {
        "kernel": {"kind": kernel.kind, "version": kernel.version},
        "accel": assets.accel.accel,
        "cold_start_ms": summary(cold),
        **warm,
        "floor_qemu_boot_ms": summary(floor),
    }


async def run(cold_runs: int = 10, rtt_runs: int = 300) -> dict[str, Any]:
    """Benchmark every available kernel; the default kernel's numbers are the top level."""
    from engine.vm.kernel import available_kernels, resolve_kernel

    default = resolve_kernel(paths.cache_dir())
    per_kernel = {}
    for kernel in available_kernels(paths.cache_dir()):
        per_kernel[kernel.kind] = await bench_kernel(kernel, cold_runs, rtt_runs)
    top = dict(per_kernel[default.kind])
    top["default_kernel"] = default.kind
    top["floor_subprocess_ms"] = summary(subprocess_floor())
    top["kernels"] = per_kernel
    top["host"] = {"cpus": os.cpu_count(), "uname": " ".join(os.uname())}
    return top
