"""Interactive terminals, files and metrics in a real VM."""

from __future__ import annotations

import asyncio
import os

from engine.sandbox.sandbox import Sandbox
from engine.vm.agent import Process


async def _read_until(proc: Process, needle: bytes, timeout: float = 30) -> bytes:
    buf = b""

    async def loop() -> bytes:
        nonlocal buf
        while needle not in buf:
            chunk = await proc.read()
            assert chunk is not None, f"process ended before {needle!r}; got {buf!r}"
            buf += chunk.data
        return buf

    return await asyncio.wait_for(loop(), timeout)


async def test_pty_reports_size_and_follows_resize(sandbox: Sandbox) -> None:
    proc = await sandbox.pty(["/bin/sh"], rows=33, cols=101)
    await proc.write(b"stty size\n")
    await _read_until(proc, b"33 101")
    await proc.resize(40, 120)
    await proc.write(b"stty size\n")
    await _read_until(proc, b"40 120")
    await proc.write(b"tty; exit 7\n")
    out = await _read_until(proc, b"/dev/pts/")
    assert b"/dev/pts/" in out
    assert (await asyncio.wait_for(proc.wait(), 30)).exit_code == 7


async def test_pty_ctrl_c_interrupts_the_foreground_program(sandbox: Sandbox) -> None:
    proc = await sandbox.pty(["/bin/sh"])
    await _read_until(proc, b"# ")  # the prompt: the shell has set up its signal handling
    await proc.write(b"sleep 100\n")

    async def sleep_runs() -> None:
        while (await sandbox.exec(["pidof", "sleep"])).exit_code != 0:
            pass

    await asyncio.wait_for(sleep_runs(), 30)
    await proc.write(b"\x03")
    await _read_until(proc, b"^C")
    # The shell survived the interrupt and saw its child die of SIGINT (128 + 2).
    await proc.write(b"echo alive-$?\n")
    await _read_until(proc, b"alive-130")
    await proc.write(b"exit\n")
    await asyncio.wait_for(proc.wait(), 30)


async def test_file_write_read_stat_list_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(300 * 1024 + 5)
    await sandbox.write_file("/work/sub/data.bin", data, mode=0o600)
    assert await sandbox.read_file("/work/sub/data.bin") == data
    st = await sandbox.stat("/work/sub/data.bin")
    assert st.size == len(data) and st.mode & 0o777 == 0o600
    names = [e.name for e in await sandbox.listdir("/work/sub")]
    assert names == ["data.bin"]
    res = await sandbox.exec(["sha256sum", "/work/sub/data.bin"])
    import hashlib

    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_metrics_are_plausible(sandbox: Sandbox) -> None:
    idle = await sandbox.metrics()
    assert 200 < idle.memory_total_mib <= 256
    assert 0 < idle.memory_mib < idle.memory_total_mib
    assert idle.processes >= 1 and idle.uptime_s > 0
    assert idle.host_rss_mib is not None and idle.host_rss_mib > 10
    burn = await sandbox.spawn(["sh", "-c", "while :; do :; done"], timeout=5)
    await sandbox.metrics()  # start of the measured interval
    await asyncio.sleep(1.0)  # the interval being measured, not a wait for an event
    busy = await sandbox.metrics()
    assert busy.cpu_percent > 30, busy
    await sandbox.write_file("/big", b"x" * (4 << 20))
    after = await sandbox.metrics()
    assert after.disk_bytes >= idle.disk_bytes + (4 << 20) - 4096
    await burn.signal(9)
    await burn.wait()
