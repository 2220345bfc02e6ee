"""msb-tui benchmarks: start-up to the first frame, and key-to-screen latency while sandboxes
stream metrics.

- Start-up: `msb-tui` (the real console script, embedded engine, this repository's
  Sandboxfile) in a fresh tmux pane; the clock runs from spawning the pane's command until
  `tmux capture-pane` shows the dashboard's footer. Polling every 5 ms bounds the error.
  Floor in the same run: the same measurement of `python3 -c 'print("ready")'`.
- Typing: the app over the fake workbench with four running sandboxes whose metrics change
  every 50 ms and a dashboard polling every 50 ms (20× its real 1 Hz), the REPL screen open;
  each key event is timed from being posted to the REPL input until its character is in the buffer.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _stats(xs: list[float]) -> dict[str, Any]:
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 1), "max": round(xs[-1], 1), "n": len(xs)}


def _first_frame_ms(command: str, marker: str, timeout: float = 30.0) -> float:
    session = f"msb-bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "36", "-c", str(ROOT), command],
                   check=True)  # fmt: skip
    try:
        while time.perf_counter() - t0 < timeout:
            pane = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True)
            if marker in pane.stdout:
                return (time.perf_counter() - t0) * 1000
            time.sleep(0.005)
        raise RuntimeError(f"{command!r} showed no {marker!r} within {timeout} s")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def startup(runs: int) -> dict[str, Any]:
    if shutil.which("tmux") is None:
        raise RuntimeError("tmux is needed (make setup installs it)")
    tui = f"{Path(sys.executable).parent / 'msb-tui'} --file {ROOT / 'Sandboxfile'}"
    floor = f"{sys.executable} -c 'print(\"ready\"); import time; time.sleep(5)'"
    tui_ms, floor_ms = [], []
    # an idle session keeps the tmux server up between runs (a server that exits as the last
    # session closes races the next run's new-session)
    anchor = f"msb-bench-anchor-{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", anchor, "sleep 3600"], check=True)
    try:
        _first_frame_ms(tui, "Dashboard")  # warm the page cache once, not counted
        for _ in range(runs):
            floor_ms.append(_first_frame_ms(floor, "ready"))
            tui_ms.append(_first_frame_ms(tui, "Dashboard"))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", anchor], capture_output=True)
    return {"tui_first_frame_ms": _stats(tui_ms), "python_floor_ms": _stats(floor_ms)}


async def typing_latency(keys: int) -> dict[str, Any]:
    from msb_tui.app import MsbApp
    from msb_tui.fake import FakeWorkbench
    from msb_tui.screens.repl import ReplScreen
    from msb_tui.workbench import SandboxRow

    rows = [SandboxRow(name=f"sb{i}", image="busybox", status="running", accel="tcg", uptime_s=1.0,
                       cpu_percent=1.0, memory_mib=64.0) for i in range(4)]  # fmt: skip
    workbench = FakeWorkbench(None, sandboxes=rows)
    app = MsbApp(workbench)
    app.metrics_interval = 0.05  # the dashboard (under the REPL) polls 20x a second
    latencies = []
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause()

        async def stream() -> None:
            while True:
                workbench.tick()
                await asyncio.sleep(0.05)

        ticker = asyncio.create_task(stream())
        await app.push_screen(ReplScreen("sb0"))
        await pilot.pause()
        from textual import events

        from msb_tui.widgets.repl_input import ReplInput

        editor = app.screen.query_one(ReplInput)
        try:
            for i in range(keys):
                char = "abcdefghij"[i % 10]
                before = len(editor.text)
                t0 = time.perf_counter()
                editor.post_message(events.Key(char, char))
                while len(editor.text) == before:  # processed: the character is in the buffer
                    await asyncio.sleep(0)
                latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            ticker.cancel()
    return {"key_latency_ms": _stats(latencies)}


async def run(runs: int = 5, keys: int = 200) -> dict[str, Any]:
    result = startup(runs)
    result.update(await typing_latency(keys))
    return result
