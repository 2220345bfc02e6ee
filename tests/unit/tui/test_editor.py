"""Pilot tests of the Sandboxfile editor (msb_tui/screens/editor.py) over the fake workbench
and a real file in a temporary directory (conftest's ``sandboxfile``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Label, Static, TextArea

from engine.project.sandboxfile import Sandboxfile
from msb_tui.app import MsbApp
from msb_tui.fake import FakeWorkbench
from msb_tui.screens.editor import EditorScreen
from msb_tui.screens.editor_add import AddSandboxScreen
from msb_tui.screens.editor_conflict import ConflictScreen
from msb_tui.widgets.sandbox_list import SandboxList
from tests.unit.helpers import STEP_TIMEOUT_S, eventually


async def open_editor(pilot: Pilot[None], *, watch: bool = True) -> EditorScreen:
    await pilot.press("f3")
    await eventually(lambda: isinstance(pilot.app.screen, EditorScreen))
    screen = pilot.app.screen
    assert isinstance(screen, EditorScreen)
    await asyncio.wait_for(screen.loaded.wait(), STEP_TIMEOUT_S)
    if watch:
        await asyncio.wait_for(screen.watching.wait(), STEP_TIMEOUT_S)
    await pilot.pause()
    return screen


async def retype(pilot: Pilot[None], screen: EditorScreen, field: str, text: str) -> None:
    """Focus a form field, clear it and type ``text`` as a user would."""
    widget = screen.query_one(f"#field-{field}", Input)
    widget.focus()
    await pilot.press("end", *["backspace"] * len(widget.value), *text)


def error_text(screen: EditorScreen, field: str) -> str:
    return str(screen.query_one(f"#error-{field}", Static).render())


def notifications(app: MsbApp) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


def without_line(text: str, index: int) -> list[str]:
    lines = text.splitlines(keepends=True)
    return lines[:index] + lines[index + 1 :]


async def test_edit_memory_then_save_changes_only_that_line(make_app: Callable[..., MsbApp],
                                                            sandboxfile: Path) -> None:  # fmt: skip
    before = sandboxfile.read_text()
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot)
        assert screen.query_one("#field-memory", Input).value == "1024"
        await retype(pilot, screen, "memory", "2048")
        await eventually(lambda: "unsaved" in screen.title)
        await pilot.press("ctrl+s")
        await eventually(lambda: "2048" in sandboxfile.read_text())
        await eventually(lambda: screen.title == "Sandboxfile")
    after = sandboxfile.read_text()
    index = before.splitlines().index("    memory: 1024          # MiB")
    assert after.splitlines()[index] == "    memory: 2048          # MiB"
    assert without_line(after, index) == without_line(before, index)


async def test_invalid_memory_is_shown_inline_and_save_is_refused(make_app: Callable[..., MsbApp],
                                                                  sandboxfile: Path) -> None:  # fmt: skip
    before = sandboxfile.read_text()
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot)
        await retype(pilot, screen, "memory", "lots")
        await eventually(lambda: "(got 'lots')" in error_text(screen, "memory"))
        assert "memory must be an integer number of MiB (got 'lots')" in error_text(screen, "memory")
        assert screen.query_one("#row-memory").has_class("-invalid")
        await pilot.press("ctrl+s")
        await eventually(lambda: any("Not saved" in n for n in notifications(app)))
        await retype(pilot, screen, "memory", "512")
        await eventually(lambda: error_text(screen, "memory") == "")
    assert sandboxfile.read_text() == before


async def test_file_changed_on_disk_is_reloaded(make_app: Callable[..., MsbApp], sandboxfile: Path) -> None:
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot)
        sandboxfile.write_text(sandboxfile.read_text().replace("memory: 1024", "memory: 777"))
        memory = screen.query_one("#field-memory", Input)
        await eventually(lambda: memory.value == "777")
        assert "memory: 777" in screen.query_one("#yaml", TextArea).text
        assert not screen.unsaved
        assert not isinstance(app.screen, ConflictScreen)


async def test_disk_change_with_unsaved_edits_reload_takes_the_disk(make_app: Callable[..., MsbApp],
                                                                    sandboxfile: Path) -> None:  # fmt: skip
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot)
        await retype(pilot, screen, "cpus", "4")
        await eventually(lambda: "cpus: 4" in screen.text)
        sandboxfile.write_text(sandboxfile.read_text().replace("memory: 1024", "memory: 777"))
        await eventually(lambda: isinstance(app.screen, ConflictScreen))
        await pilot.press("r")
        await eventually(lambda: isinstance(app.screen, EditorScreen) and not screen.unsaved)
        assert screen.query_one("#field-memory", Input).value == "777"
        assert screen.query_one("#field-cpus", Input).value == "1"
        assert screen.text == sandboxfile.read_text()


async def test_disk_change_with_unsaved_edits_keep_mine_then_save(make_app: Callable[..., MsbApp],
                                                                  sandboxfile: Path) -> None:  # fmt: skip
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot)
        await retype(pilot, screen, "cpus", "4")
        await eventually(lambda: "cpus: 4" in screen.text)
        sandboxfile.write_text(sandboxfile.read_text().replace("memory: 1024", "memory: 777"))
        await eventually(lambda: isinstance(app.screen, ConflictScreen))
        await pilot.press("k")
        await eventually(lambda: isinstance(app.screen, EditorScreen))
        await pilot.pause()
        assert screen.query_one("#field-cpus", Input).value == "4"
        assert screen.unsaved and "unsaved" in screen.title
        seen = screen.changes_seen
        await pilot.press("ctrl+s")
        await eventually(lambda: "cpus: 4" in sandboxfile.read_text())
        # our own save is seen by the watcher and ignored: no question, no reload
        await eventually(lambda: screen.changes_seen > seen)
        assert isinstance(app.screen, EditorScreen)
        assert not screen.unsaved
    text = sandboxfile.read_text()
    assert "memory: 1024" in text and "memory: 777" not in text  # mine, over the disk's


async def test_yaml_view_edits_are_checked_with_file_line_col(make_app: Callable[..., MsbApp],
                                                              sandboxfile: Path) -> None:  # fmt: skip
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        await pilot.press("f5")
        area = screen.query_one("#yaml", TextArea)
        area.focus()
        line = area.text.splitlines().index("    memory: 1024          # MiB")
        area.move_cursor((line, len("    memory: ")))
        await pilot.press(*["delete"] * 4, *"lots")
        problem = screen.query_one("#yaml-problem", Static)
        await eventually(lambda: "integer number of MiB" in str(problem.render()))
        assert f"Sandboxfile:{line + 1}:13: sandboxes.api.memory must be an integer number of MiB (got 'lots')" \
            in str(problem.render())  # fmt: skip
        assert screen.unsaved
        assert "lots" in error_text(screen, "memory")  # the form shows it under the field too
        await pilot.press("ctrl+s")
        await eventually(lambda: any("Not saved" in n for n in notifications(app)))


async def test_add_and_remove_sandboxes(make_app: Callable[..., MsbApp], sandboxfile: Path) -> None:
    before = sandboxfile.read_text()
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        await pilot.press("ctrl+n")
        await eventually(lambda: isinstance(app.screen, AddSandboxScreen))
        await pilot.press(*"web", "enter", *"busybox", "enter")
        await eventually(lambda: "web" in screen.outline.names)
        assert screen.selected == "web"
        screen.query_one(SandboxList).focus()
        screen.query_one(SandboxList).highlighted = 1  # db: api depends on it
        await eventually(lambda: screen.selected == "db")
        await pilot.press("delete")
        await eventually(lambda: any("depends on 'db'" in n for n in notifications(app)))
        screen.query_one(SandboxList).highlighted = 2
        await eventually(lambda: screen.selected == "worker")
        await pilot.press("delete")
        await eventually(lambda: "worker" not in screen.outline.names)
        await pilot.press("ctrl+s")
        await eventually(lambda: "web:" in sandboxfile.read_text())
    after = sandboxfile.read_text()
    head = before[: before.index("  worker:")]
    assert after == head + "  web:\n    image: busybox\n"


async def test_a_file_that_is_not_yaml_opens_in_the_yaml_view(make_app: Callable[..., MsbApp],
                                                              sandboxfile: Path) -> None:  # fmt: skip
    sandboxfile.write_text("sandboxes:\n  api: [\n")
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        assert screen.parse_problem is not None and "not valid YAML" in screen.parse_problem.message
        assert screen.query_one("#editor-tabs").active == "tab-yaml"  # type: ignore[attr-defined]
        assert screen.query_one("#form").disabled


async def test_remote_mode_has_no_file_to_edit(sandboxfile: Path) -> None:
    app = MsbApp(FakeWorkbench(None))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f3")
        await eventually(lambda: isinstance(app.screen, EditorScreen))
        await pilot.pause()
        title = str(app.screen.query_one("#editor-remote-title", Label).render())
        assert title == "No local Sandboxfile in remote mode"
        await pilot.press("ctrl+s", "ctrl+n")  # nothing to do, nothing breaks
        assert not app.screen.query("SandboxForm")


async def test_yaml_colours_follow_the_theme(make_app: Callable[..., MsbApp]) -> None:
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        area = screen.query_one("#yaml", TextArea)
        assert area.theme == "css"
        await pilot.press("ctrl+t")
        await eventually(lambda: area.theme == "github_light")


async def test_a_failed_save_is_reported_and_the_edits_stay_unsaved(
    make_app: Callable[..., MsbApp], sandboxfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: Sandboxfile) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Sandboxfile, "save", disk_full)
    before = sandboxfile.read_text()
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        await retype(pilot, screen, "memory", "2048")
        await pilot.press("ctrl+s")
        await eventually(lambda: any("Saving the Sandboxfile failed" in n for n in notifications(app)))
        assert any("cannot write" in n and "No space left on device" in n for n in notifications(app))
        assert screen.unsaved and "memory: 2048" in screen.text
    assert sandboxfile.read_text() == before


async def test_switching_sandbox_applies_the_pending_edit(make_app: Callable[..., MsbApp], sandboxfile: Path) -> None:
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        field = screen.query_one("#field-cpus", Input)
        field.focus()
        await pilot.press("end", "backspace", "3")
        screen.query_one(SandboxList).highlighted = 1  # before the debounce ends
        await eventually(lambda: screen.selected == "db" and "cpus: 3" in screen.text)
        assert field.value == ""  # db's form
        assert screen.query_one("#field-memory", Input).value == "256"
        await pilot.press("ctrl+s")
        await eventually(lambda: "cpus: 3" in sandboxfile.read_text())


async def test_a_problem_of_the_whole_file_shows_under_its_field(make_app: Callable[..., MsbApp]) -> None:
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_editor(pilot, watch=False)
        await retype(pilot, screen, "depends_on", "db, nope")
        await eventually(lambda: "nope" in error_text(screen, "depends_on"))
        assert "sandboxes.api.depends_on[1] names 'nope', which this file does not define" \
            in error_text(screen, "depends_on")  # fmt: skip
        assert "✗" in str(screen.query_one(SandboxList).get_option_at_index(0).prompt)
