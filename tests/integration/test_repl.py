"""Persistent REPLs in real VMs booted from msb's python and node images (engine/repl/)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.images.resolve import resolve_root
from engine.repl.models import ReplResult
from engine.repl.pool import ReplPool
from engine.sandbox.engine import Engine
from engine.sandbox.sandbox import Sandbox

IMAGES = {"python": "microsandbox/python", "node": "microsandbox/node"}
ROUND_TRIPS = 50


@pytest.fixture
async def image_sandbox(request: pytest.FixtureRequest, base_images: None, engine: Engine) -> AsyncIterator[Sandbox]:
    root = await resolve_root(IMAGES[request.param])
    sb = await engine.start(root.spec(f"repl-{request.param}-{os.urandom(3).hex()}", memory_mib=512))
    try:
        yield sb
    finally:
        await sb.kill()


def texts(result: ReplResult, stream: str = "stdout") -> list[str]:
    return [line.text for line in result.output if line.stream == stream]


async def round_trip_ms(pool: ReplPool, language: str) -> float:
    """p50 of ``1+1`` round trips (ms), printed with the spread."""
    times = []
    for _ in range(ROUND_TRIPS):
        started = time.perf_counter()
        result = await pool.run(language, "1+1")
        times.append((time.perf_counter() - started) * 1000)
        assert texts(result) == ["2"]
    p50 = statistics.median(times)
    print(f"{language} REPL round trip over {ROUND_TRIPS} runs: p50 {p50:.2f} ms, min {min(times):.2f} ms, "
          f"max {max(times):.2f} ms")  # fmt: skip
    return p50


@pytest.mark.parametrize("image_sandbox", ["python"], indirect=True)
async def test_python_repl_in_a_vm(image_sandbox: Sandbox) -> None:
    pool = ReplPool(image_sandbox)
    try:
        started = time.perf_counter()
        assert (await pool.run("python", "x = 41")).status == "success"
        print(f"python REPL first call (starts the interpreter, accel={image_sandbox.accel}): "
              f"{time.perf_counter() - started:.2f} s")  # fmt: skip
        assert texts(await pool.run("python", "x + 1")) == ["42"]

        code = "import os, subprocess\nprint('py', flush=True)\nsubprocess.run(['echo', 'child'])\nos.getpid() > 1"
        assert texts(await pool.run("python", code)) == ["py", "child", "True"]

        error = await pool.run("python", "1 / 0")
        assert error.status == "error" and texts(error, "stderr")[-1] == "ZeroDivisionError: division by zero"

        timed_out = await pool.run("python", "import time\ntime.sleep(60)", timeout=1)
        assert timed_out.status == "error" and "KeyboardInterrupt" in texts(timed_out, "stderr")
        assert timed_out.output[-1].text == "Execution timed out after 1 s; interrupted (interpreter state kept)"
        assert texts(await pool.run("python", "x")) == ["41"]

        await round_trip_ms(pool, "python")
    finally:
        await pool.close()


@pytest.mark.parametrize("image_sandbox", ["node"], indirect=True)
async def test_node_repl_in_a_vm(image_sandbox: Sandbox) -> None:
    pool = ReplPool(image_sandbox)
    try:
        started = time.perf_counter()
        assert (await pool.run("javascript", "let x = 41")).status == "success"
        print(f"node REPL first call (starts the interpreter, accel={image_sandbox.accel}): "
              f"{time.perf_counter() - started:.2f} s")  # fmt: skip
        result = await pool.run("nodejs", "x + 1")
        assert (result.language, texts(result)) == ("nodejs", ["42"])
        assert texts(await pool.run("node", "const v = await Promise.resolve(6); v * 7")) == ["42"]

        error = await pool.run("node", "null.boom")
        assert error.status == "error" and texts(error, "stderr")[0].startswith("TypeError: Cannot read properties")

        timed_out = await pool.run("node", "while (true) {}", timeout=1)
        assert timed_out.status == "error"
        assert timed_out.output[-1].text == "Execution timed out after 1 s; interrupted (interpreter state kept)"
        assert texts(await pool.run("node", "x")) == ["41"]

        exited = await pool.run("node", "process.exit(3)")
        assert exited.status == "error" and "exited (status 3)" in exited.output[-1].text
        assert texts(await pool.run("node", "typeof x")) == ["'undefined'"]

        await round_trip_ms(pool, "node")
    finally:
        await pool.close()


async def test_image_without_python_is_a_clear_error(sandbox: Sandbox, busybox_rootfs: Path) -> None:
    pool = ReplPool(sandbox)
    with pytest.raises(ConfigError, match="this image has no python3; use microsandbox/python"):
        await pool.run("python", "1")
    with pytest.raises(ConfigError, match="this image has no node; use microsandbox/node"):
        await pool.run("node", "1")
    await pool.close()
