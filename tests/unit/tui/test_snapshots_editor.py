"""Snapshots of the Sandboxfile editor — loading, empty, populated (dark and light), the YAML
view, an inline error, a file that is not YAML, an unreadable file, the conflict question and
remote mode — at 80×24 and 160×48, over the FakeWorkbench and a file in a temporary directory
(the working directory, so that messages name just ``Sandboxfile``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.editor import EditorScreen
from msb_tui.screens.editor_conflict import ConflictScreen
from tests.unit.helpers import eventually
from tests.unit.tui.conftest import SIZES

MakeApp = Callable[..., MsbApp]
SnapCompare = Callable[..., bool]
Step = Callable[[Pilot[Any], EditorScreen], Awaitable[None]]
size_ids = pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")


@pytest.fixture(autouse=True)
def in_project(sandboxfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sandboxfile.parent)


def open_editor(then: Step | None = None, *, state: str = "loaded", watch: bool = False) -> Callable[..., Any]:
    """A ``run_before`` that switches to the editor and waits until it has read the file."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("f3")
        await eventually(lambda: isinstance(pilot.app.screen, EditorScreen))
        screen = pilot.app.screen
        assert isinstance(screen, EditorScreen)
        if state == "loaded":
            await asyncio.wait_for(screen.loaded.wait(), 10)
        else:
            await eventually(lambda: screen.has_class(state))
        if watch:
            await asyncio.wait_for(screen.watching.wait(), 10)
        if then is not None:
            await then(pilot, screen)
        await pilot.pause()

    return run_before


async def to_yaml(pilot: Pilot[Any], screen: EditorScreen) -> None:
    await pilot.press("f5")


async def memory_lots(pilot: Pilot[Any], screen: EditorScreen) -> None:
    field = screen.query_one("#field-memory", Input)
    field.focus()
    await pilot.press("end", *["backspace"] * len(field.value), *"lots")
    await eventually(lambda: screen.query_one("#row-memory").has_class("-invalid"))
    field.cursor_blink = False


async def conflict(pilot: Pilot[Any], screen: EditorScreen) -> None:
    assert screen.path is not None
    await memory_lots(pilot, screen)
    screen.path.write_text(screen.path.read_text().replace("cpus: 1", "cpus: 2"))
    await eventually(lambda: isinstance(pilot.app.screen, ConflictScreen))


@size_ids
def test_editor_loading(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int],
                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    async def stalled(self: EditorScreen) -> str | None:
        await asyncio.Event().wait()
        return None

    monkeypatch.setattr(EditorScreen, "_read_disk", stalled)
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor(state="-loading"))


@size_ids
def test_editor_empty(snap_compare: SnapCompare, make_app: MakeApp, sandboxfile: Path, size: tuple[int, int]) -> None:
    sandboxfile.write_text("# a new project\nsandboxes:\n")
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor())


@size_ids
def test_editor_populated(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor())


@size_ids
def test_editor_populated_light(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(theme="msb-light"), terminal_size=size, run_before=open_editor())


@size_ids
def test_editor_yaml_view(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor(to_yaml))


@size_ids
def test_editor_yaml_view_light(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(theme="msb-light"), terminal_size=size, run_before=open_editor(to_yaml))


@size_ids
def test_editor_inline_error(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor(memory_lots))


@size_ids
def test_editor_not_yaml(snap_compare: SnapCompare, make_app: MakeApp, sandboxfile: Path,
                         size: tuple[int, int]) -> None:  # fmt: skip
    sandboxfile.write_text("# broken\nsandboxes:\n  api:\n    image: busybox\n    ports: [8000:8000\n")
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor())


@size_ids
def test_editor_unreadable(snap_compare: SnapCompare, make_app: MakeApp, sandboxfile: Path,
                           size: tuple[int, int]) -> None:  # fmt: skip
    sandboxfile.write_bytes(b"sandboxes:\n  api:\n    image: \xff\xfe\n")
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor(state="-error"))


@size_ids
def test_editor_conflict(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_editor(conflict, watch=True))


@size_ids
def test_editor_remote(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    app = MsbApp(FakeWorkbench(None))
    assert snap_compare(app, terminal_size=size, run_before=open_editor(state="-remote"))
