"""msb-tui's embedded-engine workbench on real VMs: the dashboard's rows and metrics,
start/stop, a shell, the REPL, logs — what the screens call, without a screen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.errors import MsbError
from msb_tui.local import LocalWorkbench

SANDBOXFILE = """\
sandboxes:
  py:
    image: microsandbox/python
    memory: 384
    scope: none
    scripts:
      start: echo started-by-the-tui
  idle:
    image: {rootfs}
    memory: 128
    scope: none
"""


@pytest.fixture
async def workbench(tmp_path: Path, busybox_rootfs: Path, base_images: None) -> LocalWorkbench:
    (tmp_path / "Sandboxfile").write_text(SANDBOXFILE.format(rootfs=busybox_rootfs))
    wb = LocalWorkbench.open(tmp_path)
    yield wb
    for name in ("py", "idle"):
        await wb.stop(name)
    await wb.close()


async def test_start_metrics_repl_shell_logs_stop(workbench: LocalWorkbench) -> None:
    rows = {r.name: r for r in await workbench.sandboxes()}
    assert rows["py"].status == "stopped" and rows["py"].image == "microsandbox/python"
    async with asyncio.timeout(180):
        await workbench.start("py")
        rows = {r.name: r for r in await workbench.sandboxes()}
        assert rows["py"].status == "running" and rows["py"].backend_label == "gVisor"  # auto, on this host
        assert await workbench.backend() == "gVisor" and "· gVisor ·" in workbench.description
        assert rows["py"].memory_mib and rows["py"].command == ["/bin/sh", "-c", "echo started-by-the-tui"]
        assert (await workbench.run_code("py", "python", "x = 1")).status == "success"
        result = await workbench.run_code("py", "python", "x + 1")
        assert [line.text for line in result.output] == ["2"]
        logs = workbench.logs("py")
        seen = b""
        while b"main process exited with 0" not in seen:  # the start script ends…
            seen += await anext(logs)
        await logs.aclose()
        assert b"started-by-the-tui" in seen
        rows = {r.name: r for r in await workbench.sandboxes()}
        assert rows["py"].status == "running"  # …and the sandbox stays up for shells and REPLs
        shell = await workbench.shell("py", 24, 80)
        await shell.write(b"echo hello-$((6*7)); exit\n")
        seen = b""
        async for chunk in shell:
            seen += chunk.data
        assert b"hello-42" in seen and (await shell.wait()).exit_code == 0
        await workbench.stop("py")
    assert {r.name: r for r in await workbench.sandboxes()}["py"].status == "stopped"


async def test_idle_start_and_errors_carry_hints(workbench: LocalWorkbench) -> None:
    async with asyncio.timeout(120):
        await workbench.start("idle")
        assert {r.name: r for r in await workbench.sandboxes()}["idle"].command is None
        with pytest.raises(MsbError) as info:
            await workbench.start("nope")
        assert info.value.hint and "msb add" in info.value.hint
        await workbench.stop("idle")
        with pytest.raises(MsbError, match="not running"):
            await workbench.shell("idle", 24, 80)
