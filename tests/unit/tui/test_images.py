"""Pilot tests of the Images screen (msb_tui/screens/images.py) over the FakeWorkbench."""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Log, ProgressBar

from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.image_dialogs import BuildDialog, ConfirmDialog, PullDialog
from msb_tui.screens.images import ImagesScreen, short_created, short_digest
from msb_tui.widgets.pull_progress import PullProgress, human_size
from msb_tui.workbench import LayerProgress, ProgressCallback
from tests.unit.helpers import eventually

MakeApp = Callable[..., MsbApp]


async def open_images(pilot: Pilot[None]) -> ImagesScreen:
    await pilot.press("f4")
    await eventually(lambda: isinstance(pilot.app.screen, ImagesScreen))
    screen = pilot.app.screen
    assert isinstance(screen, ImagesScreen)
    await eventually(lambda: not screen.has_class("-loading"))
    return screen


def table_rows(screen: ImagesScreen) -> list[list[str]]:
    table = screen.query_one(DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def test_formatting() -> None:
    assert human_size(512) == "512 B" and human_size(5000) == "5.0 kB"
    assert human_size(48_500_000) == "48.5 MB" and human_size(1_200_000_000) == "1.20 GB"
    assert short_digest("sha256:" + "ab" * 32) == "abababababab"
    assert short_created("2026-11-20T10:00:00Z") == "2026-11-20 10:00" and short_created(None) == "—"


async def test_populated(make_app: MakeApp) -> None:
    async with make_app().run_test() as pilot:
        screen = await open_images(pilot)
        assert screen.has_class("-populated")
        assert table_rows(screen) == [
            ["microsandbox/python", "latest", "a1a1a1a1a1a1", "48.5 MB", "2026-11-20 10:00"],
            ["busybox", "latest", "b2b2b2b2b2b2", "1.1 MB", "—"],
        ]


async def test_empty_says_how_to_pull(make_app: MakeApp) -> None:
    async with make_app(images=[]).run_test() as pilot:
        screen = await open_images(pilot)
        assert screen.has_class("-empty")
        text = str(screen.query_one("#images-status").render())
        assert "Press p to pull" in text and "b to build" in text
        assert screen.check_action("remove", ()) is None


async def test_error_then_retry(make_app: MakeApp) -> None:
    app = make_app(fail={"images": "cannot read the image store"})
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        assert screen.has_class("-error")
        text = str(screen.query_one("#images-status").render())
        assert "cannot read the image store" in text and "the fake was told" in text and "r to retry" in text
        app.workbench.fail.clear()  # type: ignore[attr-defined]
        await pilot.press("r")
        await eventually(lambda: screen.has_class("-populated"))
        assert len(table_rows(screen)) == 2


async def test_pull_progress_reaches_100_percent(make_app: MakeApp) -> None:
    seen: list[tuple[str, float | None]] = []

    class Watching(FakeWorkbench):
        async def pull(self, reference: str, progress: ProgressCallback):  # type: ignore[no-untyped-def]
            def spy(update: LayerProgress) -> None:
                progress(update)
                seen.append((update.layer, update.done_bytes / (update.total_bytes or 1)))

            return await super().pull(reference, spy)

    app = make_app(Watching())
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("p")
        await eventually(lambda: isinstance(app.screen, PullDialog))
        app.screen.query_one(Input).value = "docker.io/library/alpine:3.20"
        await pilot.press("enter")
        panel = screen.query_one(PullProgress)
        await eventually(lambda: panel.has_class("-done"))
        bars = list(panel.query(ProgressBar))
        assert len(bars) == 2
        assert [(bar.progress, bar.total, bar.percentage) for bar in bars] == [(4000, 4000, 1.0), (1000, 1000, 1.0)]
        assert seen[-1] == ("sha256:2222", 1.0) and ("sha256:1111", 0.5) in seen
        await eventually(lambda: len(table_rows(screen)) == 3)
        assert table_rows(screen)[-1][:2] == ["docker.io/library/alpine", "3.20"]
        assert not panel.running


async def test_pull_failure_is_a_notification(make_app: MakeApp) -> None:
    app = make_app(fail={"pull": "registry said 404"})
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("p")
        await eventually(lambda: isinstance(app.screen, PullDialog))
        app.screen.query_one(Input).value = "nope:1"
        await pilot.press("enter")
        panel = screen.query_one(PullProgress)
        await eventually(lambda: panel.has_class("-failed"))
        await eventually(lambda: len(app._notifications) == 1)
        (note,) = app._notifications
        assert note.severity == "error" and "registry said 404" in note.message and "nope:1" in note.title


async def test_pull_cancelled(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("p")
        await eventually(lambda: isinstance(app.screen, PullDialog))
        await pilot.press("escape")
        await eventually(lambda: app.screen is screen)
        assert not screen.query_one(PullProgress).display
        assert not [c for c in app.workbench.calls if c[0] == "pull"]  # type: ignore[attr-defined]


async def test_remove_with_confirm(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("down", "d")
        await eventually(lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("n")
        await eventually(lambda: app.screen is screen)
        assert len(table_rows(screen)) == 2

        await pilot.press("delete")
        await eventually(lambda: isinstance(app.screen, ConfirmDialog))
        assert "busybox:latest" in app.screen.question  # type: ignore[attr-defined]
        await pilot.press("y")
        await eventually(lambda: len(table_rows(screen)) == 1)
        assert table_rows(screen)[0][0] == "microsandbox/python"
        assert ("remove_image", "busybox:latest") in app.workbench.calls  # type: ignore[attr-defined]


async def test_remove_failure_is_a_notification(make_app: MakeApp) -> None:
    app = make_app(fail={"remove_image": "image is in use by sandbox 'api'"})
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("d")
        await eventually(lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await eventually(lambda: len(app._notifications) == 1)
        assert "in use" in next(iter(app._notifications)).message
        assert len(table_rows(screen)) == 2


async def test_build_streams_its_log(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("b")
        await eventually(lambda: isinstance(app.screen, BuildDialog))
        await pilot.press("down", "enter")
        log = screen.query_one("#images-build", Log)
        await eventually(lambda: any(line.startswith("✓ built") for line in log.lines))
        assert log.lines == [
            "Building microsandbox/node …",
            "mmdebstrap: resolving packages",
            "mmdebstrap: unpacking",
            "writing the OCI layout",
            "✓ built microsandbox/node:latest (42.0 MB)",
        ]
        await eventually(lambda: len(table_rows(screen)) == 3)


async def test_refresh_puts_finished_panels_away(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test() as pilot:
        screen = await open_images(pilot)
        await pilot.press("b")
        await eventually(lambda: isinstance(app.screen, BuildDialog))
        await pilot.press("enter")
        log = screen.query_one("#images-build", Log)
        await eventually(lambda: any(line.startswith("✓ built") for line in log.lines))
        assert log.display
        await pilot.press("r")
        assert not log.display and not screen.query_one(PullProgress).display
