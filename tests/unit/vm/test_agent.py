"""AgentClient against the fake guest: processes, files, metrics, and a hostile guest.

Every wait is bounded (``asyncio.timeout``): a host that hangs on a misbehaving guest fails
the test in seconds instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import stat

import pytest

from engine.errors import ExecError, GuestFileError, ProtocolError, VmCrashedError
from engine.vm.agent import WINDOW
from tests.unit.conftest import Launch
from tests.unit.helpers import STEP_TIMEOUT_S, FakeClock, eventually

T = STEP_TIMEOUT_S


# ---------------------------------------------------------------- processes


async def test_ready_carries_version_and_boot_timings(launch: Launch) -> None:
    _vm, client = await launch()
    ready = await client.wait_ready()
    assert ready.version == 1 and ready.agent_version == "fake-1"
    assert list(ready.timings_ns) == ["init", "modules", "root", "ready"]


async def test_exit_codes(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        assert (await client.exec(["true"])).exit_code == 0
        assert (await client.exec(["false"])).exit_code == 1
        res = await client.exec(["sh", "-c", "exit 42"])
    assert res.exit_code == 42 and not res.success


async def test_killed_by_signal_reports_128_plus_signal(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        res = await client.exec(["sh", "-c", "kill -TERM $$"])
    assert (res.signal, res.exit_code) == (15, 128 + 15)


async def test_stdout_and_stderr_are_kept_apart(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        res = await client.exec(["sh", "-c", "echo out; echo err >&2; echo out2"])
    assert (res.stdout, res.stderr) == (b"out\nout2\n", b"err\n")


async def test_env_and_cwd_are_the_guests(launch: Launch) -> None:
    vm, client = await launch()
    (vm.root / "work").mkdir()
    async with asyncio.timeout(T):
        res = await client.exec(["sh", "-c", 'echo "$GREETING"; pwd'], env={"GREETING": "hi", "PATH": "/usr/bin:/bin"},
                                cwd="/work")  # fmt: skip
    greeting, cwd = res.stdout.decode().split()
    assert greeting == "hi" and os.path.samefile(cwd, vm.root / "work")


async def test_command_not_found_and_missing_cwd_are_exec_errors(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        with pytest.raises(ExecError, match="not found") as info:
            await client.exec(["no-such-program-msb"])
        assert info.value.errno == 2
        with pytest.raises(ExecError) as info:
            await client.exec(["true"], cwd="/does/not/exist")
        assert info.value.errno == 2
        assert (await client.exec(["true"])).exit_code == 0  # the channel survived both


async def test_stdin_is_piped_in(launch: Launch) -> None:
    _vm, client = await launch()
    data = os.urandom(3 * 1024 * 1024 + 17)
    async with asyncio.timeout(T):
        res = await client.exec(["sha256sum"], stdin_data=data)
    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_ten_mib_of_output_is_intact(launch: Launch) -> None:
    _vm, client = await launch()
    script = "head -c 10485760 /dev/urandom > blob && sha256sum blob >&2 && cat blob"
    async with asyncio.timeout(T):
        res = await client.exec(["sh", "-c", script], cwd="/tmp")
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout) == 10 * 1024 * 1024
    assert res.stderr.split()[0].decode() == hashlib.sha256(res.stdout).hexdigest()


async def test_a_consumer_that_does_not_read_stops_the_process(launch: Launch) -> None:
    vm, client = await launch()
    async with asyncio.timeout(T):
        proc = await client.spawn(["head", "-c", str(4 * WINDOW), "/dev/zero"])
        fake = vm.guest.execs[proc._fid]
        await eventually(lambda: fake._unacked == WINDOW)  # a full window, then nothing more
        assert not fake.reaped  # blocked on a full pipe, as on a slow terminal
        total = 0
        async for chunk in proc:
            total += len(chunk.data)
    assert total == 4 * WINDOW and proc.returncode == 0


async def test_timeout_kills_the_whole_process_group(launch: Launch) -> None:
    vm, client = await launch()
    async with asyncio.timeout(T):
        res = await client.exec(["sh", "-c", "sleep 30 & echo $! > bg.pid; sleep 30"], cwd="/tmp", timeout=0.2)
    assert res.timed_out and res.signal == 9 and res.exit_code == 137
    bg = int((vm.root / "tmp" / "bg.pid").read_text())
    await eventually(lambda: not _alive(bg))


async def test_signal_reaches_the_process(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        proc = await client.spawn(["sleep", "30"])
        await proc.signal(signal.SIGTERM)
        status = await proc.wait()
    assert status.exit_code == 128 + 15


async def test_tty_size_resize_and_eof(launch: Launch) -> None:
    _vm, client = await launch()
    script = "stty size; trap 'stty size; kill $!; exit 0' WINCH; echo ready; sleep 30 & wait"
    async with asyncio.timeout(T):
        proc = await client.spawn(["sh", "-c", script], tty=True, stdin=True, rows=33, cols=101)
        seen = b""
        while b"ready" not in seen:
            chunk = await proc.read()
            assert chunk is not None and chunk.stream == "stdout"
            seen += chunk.data
        assert seen.startswith(b"33 101\r\n")
        await proc.resize(40, 120)
        rest = b"".join([c.data async for c in proc])
        assert b"40 120" in rest and proc.returncode == 0

        cat = await client.spawn(["cat"], tty=True, stdin=True)
        await cat.write(b"hello\n")
        await cat.close_stdin()  # ^D on a tty
        out = b"".join([c.data async for c in cat])
    assert out.count(b"hello") == 2 and cat.returncode == 0  # echoed by the tty, then by cat


# ---------------------------------------------------------------- files


async def test_files_round_trip_with_mode_append_and_listing(launch: Launch) -> None:
    _vm, client = await launch()
    blob = os.urandom(200_000)  # several 64 KiB chunks
    async with asyncio.timeout(T):
        await client.write_file("/data/sub/blob.bin", blob, mode=0o600)
        assert await client.read_file("/data/sub/blob.bin") == blob
        await client.write_file("/data/log", b"one\n")
        await client.write_file("/data/log", b"two\n", append=True)
        assert await client.read_file("/data/log") == b"one\ntwo\n"
        st = await client.stat("/data/sub/blob.bin")
        assert (stat.S_IMODE(st.mode), st.size, st.is_dir) == (0o600, len(blob), False)
        assert (await client.stat("/data")).is_dir
        names = [e.name for e in await client.listdir("/data")]
    assert names == ["log", "sub"]


async def test_file_errors_carry_the_errno(launch: Launch) -> None:
    vm, client = await launch()
    (vm.root / "big").write_bytes(b"x" * 1000)
    async with asyncio.timeout(T):
        with pytest.raises(GuestFileError) as info:
            await client.read_file("/nope")
        assert info.value.errno == 2
        with pytest.raises(GuestFileError, match="larger than 10 bytes") as info:
            await client.read_file("/big", max_bytes=10)
        assert info.value.errno == 27
        with pytest.raises(GuestFileError) as info:
            await client.listdir("/big")
        assert info.value.errno == 20
        with pytest.raises(GuestFileError) as info:
            await client.write_file("/big/under-a-file", b"", mkdirs=False)
        assert info.value.errno == 20
        assert await client.read_file("/big") == b"x" * 1000  # still connected


async def test_names_that_are_not_utf8_are_listed_not_fatal(launch: Launch) -> None:
    vm, client = await launch()
    os.mkdir(os.path.join(os.fsencode(vm.root), b"odd"))
    open(os.path.join(os.fsencode(vm.root), b"odd", b"caf\xe9"), "wb").close()
    async with asyncio.timeout(T):
        entries = await client.listdir("/odd")
    assert [e.name for e in entries] == ["caf\ufffd"] and client.dead is None


async def test_concurrent_commands_are_routed_apart(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        results = await asyncio.gather(*(client.exec(["sh", "-c", f"echo {i}; exit {i}"]) for i in range(8)))
    assert [(r.stdout, r.exit_code) for r in results] == [(f"{i}\n".encode(), i) for i in range(8)]


async def test_background_children_die_with_the_vm(launch: Launch) -> None:
    vm, client = await launch()
    async with asyncio.timeout(T):
        res = await client.exec(["sh", "-c", "sleep 30 > /dev/null 2>&1 & echo $!"])
        bg = int(res.stdout)
        assert res.exit_code == 0 and _alive(bg)
        await vm.kill()
    await eventually(lambda: not _alive(bg))


async def test_paths_cannot_escape_the_guest_root(launch: Launch) -> None:
    vm, client = await launch()
    (vm.root / "link").symlink_to("/etc")
    async with asyncio.timeout(T):
        for path in ("/../../etc/passwd", "/link/passwd", "../etc/hostname"):
            with pytest.raises(GuestFileError) as info:
                await client.read_file(path)
            assert info.value.errno == 13, path
        with pytest.raises(GuestFileError):
            await client.write_file("/link/msb-should-not-exist", b"x")
    assert not os.path.exists("/etc/msb-should-not-exist")


# ---------------------------------------------------------------- metrics, ping


async def test_metrics_are_plausible_and_move_with_time(launch: Launch, clock: FakeClock) -> None:
    _vm, client = await launch(clock=clock)
    async with asyncio.timeout(T):
        first = await client.metrics()
        clock.advance(5)
        second = await client.metrics()
    assert first.clk_tck == 100 and first.ncpus == 1
    assert 0 < first.mem_available_kib < first.mem_total_kib == 512 * 1024
    assert first.disk_used_bytes <= first.disk_total_bytes and first.nprocs >= 1
    assert second.uptime_ms - first.uptime_ms == 5000
    assert second.cpu_total_ticks - first.cpu_total_ticks == 500
    assert 0 < second.cpu_busy_ticks - first.cpu_busy_ticks < 500


async def test_ping_echoes(launch: Launch) -> None:
    _vm, client = await launch()
    async with asyncio.timeout(T):
        assert await client.ping(b"x" * 100) >= 0


async def test_shutdown_ends_the_vm_with_status_zero(launch: Launch) -> None:
    vm, client = await launch()
    async with asyncio.timeout(T):
        proc = await client.spawn(["sleep", "30"])
        pid = proc.pid
        await client.shutdown()
        assert await vm.wait_exited() == 0
        with pytest.raises(VmCrashedError):
            await proc.wait()
    assert vm.exited() and not vm.root.exists()
    await eventually(lambda: not _alive(pid))


# ---------------------------------------------------------------- a hostile guest


@pytest.mark.parametrize("misbehave", ["oversized_frame", "garbage"])
async def test_malformed_frames_fail_every_pending_request(launch: Launch, misbehave: str) -> None:
    _vm, client = await launch(misbehave)
    async with asyncio.timeout(T):
        results = await asyncio.gather(
            client.ping(b"a"), client.metrics(), client.stat("/"), client.exec(["true"]), return_exceptions=True
        )
        assert all(isinstance(r, ProtocolError) for r in results), results
        assert isinstance(client.dead, ProtocolError)
        with pytest.raises(ProtocolError):  # and later calls fail at once
            await client.ping()


async def test_output_beyond_the_window_is_a_protocol_error(launch: Launch) -> None:
    _vm, client = await launch("ignore_window")
    async with asyncio.timeout(T):
        with pytest.raises(ProtocolError, match="over its limit"):
            await client.exec(["yes"])


async def test_out_of_range_exit_is_a_protocol_error(launch: Launch) -> None:
    _vm, client = await launch("bad_exit")
    async with asyncio.timeout(T):
        with pytest.raises(ProtocolError, match="invalid frame 0x44"):
            await client.exec(["true"])


async def test_vm_dying_mid_exec_is_a_crash(launch: Launch) -> None:
    vm, client = await launch("die_mid_exec")
    async with asyncio.timeout(T):
        other = asyncio.ensure_future(client.metrics())  # runs after the EXEC is sent: never answered
        with pytest.raises(VmCrashedError):
            await client.exec(["sleep", "30"])
        assert await vm.wait_exited() == 1
        with pytest.raises(VmCrashedError):
            await other
    assert "Kernel panic" in vm.console_tail()


async def test_a_guest_that_never_says_ready_is_noticed_by_the_callers_deadline(launch: Launch) -> None:
    _vm, client = await launch("never_ready", ready=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.wait_ready(), 0.2)


async def test_another_protocol_version_is_refused(launch: Launch) -> None:
    _vm, client = await launch("wrong_version", ready=False)
    async with asyncio.timeout(T):
        with pytest.raises(ProtocolError, match="protocol 2"):
            await client.wait_ready()


async def test_a_closed_client_fails_fast(launch: Launch) -> None:
    _vm, client = await launch()
    await client.close()
    with pytest.raises(VmCrashedError):
        await client.ping()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
