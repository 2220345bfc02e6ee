"""The supervisor's REPL op (what msb-tui's REPL screen uses) on a real VM: state kept
between calls, a running cell interrupted without losing the interpreter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.project.control import request
from engine.project.runtime import Project, launch, stop
from engine.project.sandboxfile import Sandboxfile


@pytest.fixture
async def project(tmp_path: Path, base_images: None) -> Project:
    (tmp_path / "Sandboxfile").write_text("sandboxes:\n  py:\n    image: microsandbox/python\n    scope: none\n")
    proj = Project(Sandboxfile.load(tmp_path / "Sandboxfile"))
    yield proj
    await stop(proj.sandbox_dir("py"))


async def test_repl_keeps_state_and_a_cell_can_be_interrupted(project: Project) -> None:
    await launch(project, "py", None)
    sock = project.sandbox_dir("py").socket()
    async with asyncio.timeout(120):
        first = await request(sock, {"op": "repl", "language": "python", "code": "x = 41"})
        assert first["result"]["status"] == "success"
        second = await request(sock, {"op": "repl", "language": "python", "code": "x + 1"})
        assert [line["text"] for line in second["result"]["output"]] == ["42"]
        assert (await request(sock, {"op": "repl_interrupt", "language": "python"}))["interrupted"] is False
        code = "import time\nprint('go', flush=True)\ntime.sleep(60)"
        running = asyncio.create_task(request(sock, {"op": "repl", "language": "python", "timeout": 90, "code": code},
                                              timeout=100))  # fmt: skip
        while not (await request(sock, {"op": "repl_interrupt", "language": "python"}))["interrupted"]:
            await asyncio.sleep(0.05)
        result = (await running)["result"]
        assert result["status"] == "error"
        assert any("KeyboardInterrupt" in line["text"] for line in result["output"])
        after = await request(sock, {"op": "repl", "language": "python", "code": "x"})
        assert [line["text"] for line in after["result"]["output"]] == ["41"]
