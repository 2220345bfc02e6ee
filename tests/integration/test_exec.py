"""Commands in a real VM: exit codes, streams, stdin, big output, timeouts, env, cwd."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from engine.errors import ExecError
from engine.sandbox.sandbox import Sandbox


async def test_exit_codes(sandbox: Sandbox) -> None:
    assert (await sandbox.exec(["true"])).exit_code == 0
    assert (await sandbox.exec(["false"])).exit_code == 1
    res = await sandbox.exec(["sh", "-c", "exit 42"])
    assert res.exit_code == 42 and not res.success


async def test_killed_by_signal_reports_128_plus_signal(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["sh", "-c", "kill -TERM $$"])
    assert res.signal == 15 and res.exit_code == 128 + 15


async def test_stdout_and_stderr_are_kept_apart(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["sh", "-c", "echo out; echo err >&2; echo out2"])
    assert res.stdout == b"out\nout2\n"
    assert res.stderr == b"err\n"


async def test_command_not_found_is_a_clear_error(sandbox: Sandbox) -> None:
    with pytest.raises(ExecError) as info:
        await sandbox.exec(["no-such-program"])
    assert info.value.errno == 2 and "not found" in str(info.value)


async def test_ten_mib_of_binary_output_is_intact(sandbox: Sandbox) -> None:
    script = "head -c 10485760 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob"
    res = await sandbox.exec(["sh", "-c", script], timeout=120)
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout) == 10 * 1024 * 1024
    assert res.stderr.split()[0].decode() == hashlib.sha256(res.stdout).hexdigest()


async def test_stdin_is_piped_in(sandbox: Sandbox) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    res = await sandbox.exec(["sha256sum"], stdin=data, timeout=60)
    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_timeout_kills_the_whole_process_group(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["sh", "-c", "sleep 300 & sleep 301 & sleep 302"], timeout=1.0)
    assert res.timed_out and not res.success
    ps = await sandbox.exec(["ps", "-o", "args"])
    assert b"sleep 30" not in ps.stdout, ps.stdout.decode()


async def test_env_and_cwd(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["sh", "-c", 'echo "$FOO|$HOME|$(pwd)"'], env={"FOO": "bar baz"}, cwd="/tmp")
    assert res.stdout == b"bar baz|/root|/tmp\n"


async def test_exec_stream_yields_chunks_as_they_come(sandbox: Sandbox) -> None:
    proc = await sandbox.spawn(["sh", "-c", "echo first; read x; echo second $x"], stdin=True)
    first = await asyncio.wait_for(proc.read(), 30)
    assert first is not None and first.data == b"first\n"
    await proc.write(b"go\n")
    rest = b""
    async for chunk in proc:
        rest += chunk.data
    assert rest == b"second go\n"
    assert (await proc.wait()).exit_code == 0


async def test_many_parallel_execs(sandbox: Sandbox) -> None:
    results = await asyncio.gather(*(sandbox.exec(["echo", str(i)]) for i in range(30)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(30)]
