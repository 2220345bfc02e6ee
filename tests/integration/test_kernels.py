"""Both guest kernels boot the whole stack: Debian's (modules in the initramfs) and ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import paths
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec
from engine.vm.kernel import resolve_kernel


@pytest.mark.parametrize("kind", ["debian", "minimal"])
async def test_kernel_boots_execs_and_persists(kind: str, busybox_rootfs: Path, tmp_path: Path) -> None:
    kernel = resolve_kernel(paths.cache_dir(), prefer=kind)
    engine = Engine(backend="qemu", kernel=kernel)
    spec = SandboxSpec(name=f"k-{kind}", rootfs=busybox_rootfs, memory_mib=256, persist_dir=tmp_path)
    async with await engine.start(spec) as sb:
        assert sb.ready.timings_ns["ready"] > 0
        uname = await sb.exec(["uname", "-r"])
        assert uname.stdout.decode().strip() == kernel.version
        await sb.exec(["sh", "-c", "echo on-disk > /root/f"])
        assert (await sb.exec(["sh", "-c", "ping -c1 -W1 127.0.0.1 >/dev/null; echo $?"])).stdout == b"0\n"
    async with await engine.start(spec) as sb:
        assert (await sb.exec(["cat", "/root/f"])).stdout == b"on-disk\n"
