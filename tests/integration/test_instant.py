"""Templates and restores on real QEMU VMs (docs/instant.md): a restored sandbox works, every
restored guest has its own identity, templates are per shape and never stale, persistent
sandboxes keep their own files."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from engine.sandbox.engine import Engine
from engine.sandbox.instant import Restorer
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec, VolumeMount
from engine.vm.template import TemplateStore

pytestmark = pytest.mark.qemu_only


async def qemu_engine(tmp_path: Path) -> Engine:
    """A QEMU engine whose templates live in ``tmp_path/templates`` (a store of its own per test)."""
    engine = Engine(backend="qemu")
    await engine.prepare()
    engine._restorer = Restorer(engine.backend, TemplateStore(tmp_path))
    return engine


def spec(rootfs: Path, **kw: object) -> SandboxSpec:
    return SandboxSpec(name=kw.pop("name", "i-" + os.urandom(3).hex()), rootfs=rootfs, memory_mib=256,  # type: ignore[arg-type]
                       network=kw.pop("network", "none"), **kw)  # type: ignore[arg-type]  # fmt: skip


async def sh(sb: Sandbox, script: str) -> str:
    res = await sb.exec(["sh", "-c", script])
    assert res.exit_code == 0, res.stderr
    return res.stdout.decode()


async def test_restore_gives_a_working_sandbox(tmp_path: Path, busybox_rootfs: Path) -> None:
    engine = await qemu_engine(tmp_path)
    first = await engine.start(spec(busybox_rootfs))
    await first.kill()
    assert first.start_info.kind == "restore" and "template built" in first.start_info.detail
    async with await engine.start(spec(busybox_rootfs)) as sb:
        assert sb.start_info.kind == "restore" and sb.start_info.detail == ""
        assert (await sb.exec(["echo", "hi"])).stdout == b"hi\n"
        await sb.write_file("/root/f.txt", b"data")
        assert await sb.read_file("/root/f.txt") == b"data"
        assert (await sb.stat("/root/f.txt")).size == 4
        proc = await sb.pty(["/bin/sh"], rows=30, cols=100)
        await proc.write(b"stty size; exit\n")
        out = b""
        async for chunk in proc:
            out += chunk.data
        assert b"30 100" in out
        metrics = await sb.metrics()
        assert metrics.memory_total_mib and metrics.memory_total_mib > 100


async def test_restored_guests_have_their_own_identity(tmp_path: Path, busybox_rootfs: Path) -> None:
    engine = await qemu_engine(tmp_path)
    await (await engine.start(spec(busybox_rootfs))).kill()  # builds the template
    a, b = await asyncio.gather(engine.start(spec(busybox_rootfs, name="alpha")),
                                engine.start(spec(busybox_rootfs, name="beta")))  # fmt: skip
    try:
        assert a.start_info.kind == b.start_info.kind == "restore"
        probe = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; date +%s; " \
                "cat /proc/sys/kernel/random/boot_id; echo $MSB_SANDBOX_ID"  # fmt: skip
        out_a, out_b = (await sh(a, probe)).split("\n"), (await sh(b, probe)).split("\n")
        now = time.time()
        assert out_a[0] != out_b[0], "two restores of one template read the same random bytes"
        assert len(out_a[0]) == 64
        assert (out_a[1], out_b[1]) == ("alpha", "beta")
        assert abs(int(out_a[2]) - now) <= 3 and abs(int(out_b[2]) - now) <= 3, "the guest clock is not the host's"
        assert out_a[3] != out_b[3], "boot_id is shared"
        assert (out_a[4], out_b[4]) == (a.id, b.id) and a.id != b.id
        await a.write_file("/tmp/secret", b"alpha's")
        assert "missing" in await sh(b, "cat /tmp/secret 2>/dev/null || echo missing")
    finally:
        await asyncio.gather(a.kill(), b.kill())


async def test_a_template_is_per_image(tmp_path: Path, busybox_rootfs: Path) -> None:
    other = tmp_path / "other-rootfs"
    shutil.copytree(busybox_rootfs, other, symlinks=True)
    (other / "etc" / "image-b").write_text("b\n")
    engine = await qemu_engine(tmp_path)
    async with await engine.start(spec(busybox_rootfs)) as sa:
        assert "template built" in sa.start_info.detail
        assert "absent" in await sh(sa, "cat /etc/image-b 2>/dev/null || echo absent")
    async with await engine.start(spec(other)) as sb:
        assert sb.start_info.kind == "restore" and "template built" in sb.start_info.detail
        assert await sh(sb, "cat /etc/image-b") == "b\n"
    templates = [d for d in (tmp_path / "templates").iterdir() if d.is_dir()]
    assert len(templates) == 2


async def test_stale_or_broken_templates_are_rebuilt_not_used(tmp_path: Path, busybox_rootfs: Path) -> None:
    store = tmp_path / "templates"
    engine = await qemu_engine(tmp_path)
    await (await engine.start(spec(busybox_rootfs))).kill()
    (tpl,) = [d for d in store.iterdir() if d.is_dir()]
    # a broken template (its state does not load) is discarded; that start boots
    (tpl / "state").write_bytes(b"\0" * 4096)
    async with await engine.start(spec(busybox_rootfs)) as sb:
        assert sb.start_info.kind == "boot" and "restore failed" in sb.start_info.detail
        assert (await sb.exec(["true"])).exit_code == 0
    assert not tpl.exists()
    async with await engine.start(spec(busybox_rootfs)) as sb:  # this engine boots that shape for a while…
        assert sb.start_info.kind == "boot" and "failed to restore" in sb.start_info.detail
    engine = await qemu_engine(tmp_path)  # …a new one (a restarted server) builds it again
    async with await engine.start(spec(busybox_rootfs)) as sb:
        assert sb.start_info.kind == "restore" and "template built" in sb.start_info.detail
    # another shape (more memory) is another template, never this one
    async with await engine.start(spec(busybox_rootfs).model_copy(update={"memory_mib": 320})) as sb:
        assert "template built" in sb.start_info.detail
        assert int((await sh(sb, "grep MemTotal /proc/meminfo")).split()[1]) > 256 * 1024


async def test_persistent_sandboxes_restore_with_their_own_files(tmp_path: Path, busybox_rootfs: Path) -> None:
    engine = await qemu_engine(tmp_path)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    async with await engine.start(spec(busybox_rootfs, persist_dir=a_dir, name="pa")) as a:
        assert a.start_info.kind == "restore"
        await a.write_file("/root/mine", b"a's file")
    async with await engine.start(spec(busybox_rootfs, persist_dir=b_dir, name="pb")) as b:
        assert b.start_info.kind == "restore" and b.start_info.detail == ""  # the same template
        assert "absent" in await sh(b, "cat /root/mine 2>/dev/null || echo absent")
        assert await sh(b, "hostname") == "pb\n"
    async with await engine.start(spec(busybox_rootfs, persist_dir=a_dir, name="pa")) as a:
        assert await a.read_file("/root/mine") == b"a's file"


async def test_volumes_are_attached_after_the_restore(tmp_path: Path, busybox_rootfs: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    engine = await qemu_engine(tmp_path)
    if not engine._assets or not engine._assets.kernel.supports_9p:
        pytest.skip("the guest kernel has no 9p")
    vol = (VolumeMount(host=host, guest="/data"),)
    async with await engine.start(spec(busybox_rootfs, volumes=vol)) as sb:
        assert sb.start_info.kind == "restore"
        assert await sh(sb, "cat /data/in.txt") == "from the host\n"
        await sh(sb, "echo back > /data/out.txt")
    assert (host / "out.txt").read_text() == "back\n"


async def test_restored_network_sandbox_is_configured(tmp_path: Path, busybox_rootfs: Path) -> None:
    engine = await qemu_engine(tmp_path)
    async with await engine.start(spec(busybox_rootfs, network="group")) as sb:
        assert sb.start_info.kind == "restore"
        assert "10.0.2.15" in await sh(sb, "ip addr show eth0 2>/dev/null || ifconfig eth0")


async def test_templates_off_boots(tmp_path: Path, busybox_rootfs: Path) -> None:
    engine = Engine(backend="qemu", templates=False)
    async with await engine.start(spec(busybox_rootfs)) as sb:
        assert sb.start_info.kind == "boot"
        assert (await sb.exec(["true"])).exit_code == 0


async def test_a_start_that_cannot_boot_either_keeps_the_template(tmp_path: Path, busybox_rootfs: Path) -> None:
    """A port already taken on the host fails the restore and the boot alike: the template was
    not at fault and stays."""
    import socket

    from engine.errors import MsbError
    from engine.sandbox.spec import PortMap

    engine = await qemu_engine(tmp_path)
    await (await engine.start(spec(busybox_rootfs, network="group"))).kill()
    (tpl,) = [d for d in (tmp_path / "templates").iterdir() if d.is_dir()]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = (PortMap(host_port=port, guest_port=8080),)
        with pytest.raises(MsbError):
            await engine.start(spec(busybox_rootfs, network="group", ports=ports))
    assert tpl.exists()
    async with await engine.start(spec(busybox_rootfs, network="group")) as sb:
        assert sb.start_info.kind == "restore" and sb.start_info.detail == ""
