"""Attack: a client floods ``sandbox.command.run`` (and so MCP's ``sandbox_run_command``, which
calls the same service method) with output to grow the server's memory or CPU time.

Measured before the fix: ``sh -c 'yes "" | head -c 8388608'`` (8 MiB of newlines) took the
server to 5.7 GiB of RSS and a 268 MB response. Now each execution keeps at most
``max_output_lines`` lines and ``max_output_bytes`` per stream, all executions together at
most ``max_output_bytes_total``, in linear time, and say what they dropped.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from engine import paths
from engine.repl.models import CommandResult
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox
from engine.sandbox.spec import SandboxSpec
from engine.server.output import collect_command, output_budget
from engine.server.settings import Limits
from engine.vm.process import ExitStatus, OutputChunk

T = 30.0
"""Seconds any one test may wait for an event."""
MiB = 1 << 20


class FloodProcess:
    """A guest process as :func:`collect_command` sees it, emitting prepared chunks."""

    def __init__(self, chunks: Iterable[tuple[str, bytes]], *, endless: bool = False) -> None:
        self._chunks = chunks
        self._endless = endless
        self.closed = False
        self.sent = 0

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[OutputChunk]:
        for n, (stream, data) in enumerate(self._chunks):
            self.sent += len(data)
            if n % 64 == 0:
                await asyncio.sleep(0)  # as a real channel does now and then
            yield OutputChunk(stream=stream, data=data)
        while self._endless and not self.closed:
            await asyncio.sleep(0)
            yield OutputChunk(stream="stdout", data=b"y\n" * 2048)

    async def wait(self) -> ExitStatus:
        return ExitStatus(exit_code=0)

    async def close(self) -> None:
        self.closed = True


class FloodSandbox:
    """Just enough of :class:`Sandbox` for :func:`collect_command`."""

    def __init__(self, proc: FloodProcess) -> None:
        self.proc = proc

    async def spawn(self, argv: list[str], *, timeout: float | None = None) -> FloodProcess:
        return self.proc


def chunks(data: bytes, size: int, stream: str = "stdout") -> list[tuple[str, bytes]]:
    view = memoryview(data)
    return [(stream, bytes(view[i : i + size])) for i in range(0, len(data), size)]


async def run(proc: FloodProcess, limits: Limits) -> CommandResult:
    return await collect_command(FloodSandbox(proc), "flood", [], None, limits)  # type: ignore[arg-type]


async def collect(proc: FloodProcess, limits: Limits, *, trace: bool = True) -> tuple[CommandResult, float, int]:
    """Run the collector on ``proc``; return the result, seconds taken and tracemalloc's peak."""
    if trace:
        tracemalloc.start()
    try:
        t0 = time.perf_counter()
        res = await asyncio.wait_for(run(proc, limits), T)
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return res, took, peak


def output_bytes(res: CommandResult) -> int:
    return sum(len(line.text) for line in res.output) + len(res.stdout) + len(res.stderr)


async def test_eight_mib_of_newlines_keeps_bounded_lines_and_bytes() -> None:
    limits = Limits()
    chunk_list = chunks(b"\n" * (8 * MiB), 64 << 10)
    res, took, peak = await collect(FloodProcess(chunk_list), limits)
    assert len(res.output) <= limits.max_output_lines + 1  # + the note
    assert res.output[-1].stream == "stderr" and "truncated" in res.output[-1].text
    assert f"{limits.max_output_lines} lines" in res.output[-1].text
    assert len(res.stdout) == 8 * MiB  # within the per-stream bound: kept whole
    assert res.model_dump_json().__len__() < 24 * MiB  # was 268 MB
    assert peak < 64 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert took < 5, took
    assert output_budget(limits).used == 0  # all given back


async def test_sixteen_mib_without_newline_is_cut_per_stream_with_a_note() -> None:
    limits = Limits(max_output_bytes=4 * MiB)
    proc = FloodProcess(chunks(b"x" * (16 * MiB), 4096) + chunks(b"e" * (2 * MiB), 4096, "stderr"))
    res, _took, peak = await collect(proc, limits)
    assert len(res.stdout) == 4 * MiB and len(res.stderr) == 2 * MiB
    assert sum(len(line.text) for line in res.output[:-1]) <= 4 * MiB
    note = res.output[-1].text
    assert f"dropped {12 * MiB} bytes of stdout" in note and "stderr" not in note.split("dropped")[1]
    assert peak < 48 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert proc.sent == 18 * MiB  # drained to the end, so the process could exit


async def test_thirty_two_mib_of_one_line_is_linear_time() -> None:
    # The old collector concatenated the partial line to each chunk: quadratic, tens of seconds.
    cpu0 = time.process_time()  # CPU time: other load on the host does not count
    res, _took, _peak = await collect(FloodProcess(chunks(b"z" * (32 * MiB), 4096)), Limits())
    cpu = time.process_time() - cpu0
    assert cpu < 4, f"{cpu:.1f} s of CPU"
    assert len(res.stdout) == Limits().max_output_bytes


async def test_many_tiny_chunks() -> None:
    limits = Limits()
    proc = FloodProcess([("stdout" if i % 2 else "stderr", b"\n" if i % 5 == 0 else b"b") for i in range(300_000)])
    cpu0 = time.process_time()
    res, _took, _peak = await collect(proc, limits, trace=False)  # tracing would dominate the time
    cpu = time.process_time() - cpu0
    assert len(res.output) <= limits.max_output_lines + 1
    assert cpu < 10, cpu


async def test_utf8_split_across_chunks_is_kept_intact() -> None:
    text = ("héllo wörld ✓\n" * 1000).encode()
    res, _took, _peak = await collect(FloodProcess(chunks(text, 7)), Limits())
    assert [line.text for line in res.output] == ["héllo wörld ✓"] * 1000
    assert res.stdout == text.decode()


async def test_the_server_wide_budget_bounds_concurrent_executions() -> None:
    limits = Limits(max_output_bytes=2 * MiB, max_output_bytes_total=4 * MiB)
    budget = output_budget(limits)
    grant, peak = budget.grant, [0]

    def watched(wanted: int) -> int:
        got = grant(wanted)
        peak[0] = max(peak[0], budget.used)
        return got

    budget.grant = watched  # type: ignore[method-assign]
    procs = [FloodProcess(chunks(b"0123456789abcde\n" * (3 * MiB // 16), 16 << 10)) for _ in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*(run(p, limits) for p in procs)), T)
    assert 0 < peak[0] <= limits.max_output_bytes_total
    starved = [r for r in results if "output buffers were full" in r.output[-1].text]
    assert starved and all(len(r.stdout) < 2 * MiB for r in starved)
    assert all(p.sent == 3 * MiB for p in procs)  # all drained
    assert budget.used == 0


async def test_a_spent_budget_truncates_instead_of_growing() -> None:
    limits = Limits(max_output_bytes_total=1 * MiB)
    budget = output_budget(limits)
    budget.grant(budget.total)  # other executions hold everything
    res, _took, _peak = await collect(FloodProcess(chunks(b"data\n" * 1000, 100)), limits)
    assert res.stdout == "" and res.output[-1].text.endswith("the server's output buffers were full]")
    budget.release(budget.total)
    res, _took, _peak = await collect(FloodProcess(chunks(b"data\n" * 1000, 100)), limits)
    assert len(res.output) == 1000 and budget.used == 0


async def test_a_cancelled_collection_kills_the_process_and_gives_its_budget_back() -> None:
    limits = Limits()
    proc = FloodProcess([], endless=True)
    task = asyncio.ensure_future(run(proc, limits))
    async with asyncio.timeout(T):
        while output_budget(limits).used == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert proc.closed and output_budget(limits).used == 0


async def test_the_service_method_behind_rpc_and_mcp_is_bounded(tmp_path: Path) -> None:
    """``sandbox.command.run`` and MCP's ``sandbox_run_command`` both call
    ``SandboxManager.run_command``: on the fake backend (real host processes), 8 MiB of
    newlines through it comes back bounded."""
    from engine.server.manager import SandboxManager
    from engine.server.service import SandboxConfig
    from engine.server.tenancy import TenantPolicy
    from engine.vm.fake import FakeBackend

    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    limits = Limits(max_output_lines=500)
    m = SandboxManager(tmp_path / "state", limits, engine=Engine(backend=FakeBackend(), accel="tcg"),
                       policy=TenantPolicy(allowed_image_dirs=(tmp_path,)))  # fmt: skip
    try:
        await m.start("t1", "flood", SandboxConfig(image=str(rootfs)))
        res = await asyncio.wait_for(m.run_command("t1", "flood", "sh", ["-c", 'yes "" | head -c 8388608'], None), T)
    finally:
        await m.shutdown()
    assert res.exit_code == 0 and len(res.stdout) == 8 * MiB
    assert len(res.output) == 501 and "500 lines" in res.output[-1].text
    assert output_budget(limits).used == 0


# ---------------------------------------------------------------- a real sandbox

BUSYBOX = paths.cache_dir() / "rootfs-dirs" / "busybox"


@pytest.fixture
async def real_sandbox() -> AsyncIterator[Sandbox]:
    if not (BUSYBOX / ".complete").exists():
        pytest.fail(f"{BUSYBOX} is missing: run `make setup` (scripts/build-test-rootfs.sh)")
    sb = await Engine().start(SandboxSpec(name="t-" + os.urandom(3).hex(), rootfs=Path(BUSYBOX), memory_mib=256))
    try:
        yield sb
    finally:
        await sb.kill()


def vm_hwm() -> int:
    """The process's peak resident memory so far, in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.vm
async def test_eight_mib_of_newlines_from_a_real_sandbox(real_sandbox: Sandbox) -> None:
    limits = Limits()
    before = vm_hwm()
    res = await asyncio.wait_for(
        collect_command(real_sandbox, "sh", ["-c", 'yes "" | head -c 8388608'], 120, limits), 180
    )
    grown = vm_hwm() - before
    assert res.exit_code == 0 and len(res.stdout) == 8 * MiB
    assert len(res.output) <= limits.max_output_lines + 1 and "truncated" in res.output[-1].text
    assert grown < 200 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
