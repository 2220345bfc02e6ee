"""Snapshots of the Images screen: loading, empty, error, populated, a pull in progress and a
finished build — at 80×24 and 160×48, over the FakeWorkbench."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.image_dialogs import BuildDialog, ConfirmDialog, PullDialog
from msb_tui.screens.images import ImagesScreen
from msb_tui.widgets.pull_progress import LayerRow
from msb_tui.workbench import ImageRow, LayerProgress, ProgressCallback
from tests.unit.helpers import eventually
from tests.unit.tui.conftest import SIZES

MakeApp = Callable[..., MsbApp]
SnapCompare = Callable[..., bool]
size_ids = pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")


class StalledPull(FakeWorkbench):
    """A pull that reports one finished layer and one half-way, then waits for ever."""

    async def pull(self, reference: str, progress: ProgressCallback) -> ImageRow:
        progress(LayerProgress(layer="sha256:1111aaaa2222bbbb", done_bytes=31_000_000, total_bytes=31_000_000,
                               finished=True))  # fmt: skip
        progress(LayerProgress(layer="sha256:3333cccc4444dddd", done_bytes=6_000_000, total_bytes=12_000_000))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def open_images(state: str, then: Callable[[Pilot[Any]], Awaitable[None]] | None = None) -> Callable[..., Any]:
    """A ``run_before`` that switches to the Images mode and waits for ``state``."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("f4")
        await eventually(lambda: isinstance(pilot.app.screen, ImagesScreen) and pilot.app.screen.has_class(state))
        if then is not None:
            await then(pilot)

    return run_before


async def pull_alpine(pilot: Pilot[Any]) -> None:
    await pilot.press("p", *"alpine:3.20", "enter")
    await eventually(lambda: len(pilot.app.screen.query(LayerRow)) == 2)


async def build_node(pilot: Pilot[Any]) -> None:
    await pilot.press("b")
    await eventually(lambda: isinstance(pilot.app.screen, BuildDialog))
    await pilot.press("down", "enter")
    table = pilot.app.screen.query_one("#images-table", DataTable)
    await eventually(lambda: table.row_count == 3 and "microsandbox/node" in str(table.get_row_at(2)))


@size_ids
def test_images_loading(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = make_app(delay=asyncio.Event())  # never set: the list never arrives
    assert snap_compare(app, terminal_size=size, run_before=open_images("-loading"))


@size_ids
def test_images_empty(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(images=[]), terminal_size=size, run_before=open_images("-empty"))


@size_ids
def test_images_error(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    app = make_app(fail={"images": "cannot read the image store at ~/.local/share/msb/images"})
    assert snap_compare(app, terminal_size=size, run_before=open_images("-error"))


@size_ids
def test_images_populated(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_images("-populated"))


@size_ids
def test_images_pulling(snap_compare: SnapCompare, make_app: MakeApp, sandboxfile: Any, size: tuple[int, int]) -> None:
    app = make_app(StalledPull(sandboxfile))
    assert snap_compare(app, terminal_size=size, run_before=open_images("-populated", pull_alpine))


@size_ids
def test_images_built(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=open_images("-populated", build_node))


def test_images_pull_dialog_light(snap_compare: SnapCompare, make_app: MakeApp) -> None:
    app = make_app(theme="msb-light")
    assert snap_compare(app, terminal_size=(80, 24), run_before=open_images("-populated", pull_dialog))


def test_images_confirm_remove(snap_compare: SnapCompare, make_app: MakeApp) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=open_images("-populated", confirm_remove))


async def pull_dialog(pilot: Pilot[Any]) -> None:
    await pilot.press("p")
    await eventually(lambda: isinstance(pilot.app.screen, PullDialog))
    pilot.app.screen.query_one(Input).cursor_blink = False
    await pilot.press(*"alpine")


async def confirm_remove(pilot: Pilot[Any]) -> None:
    await pilot.press("down", "d")
    await eventually(lambda: isinstance(pilot.app.screen, ConfirmDialog))
