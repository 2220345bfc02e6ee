"""The editor's headless half (msb_tui/sandboxfile_edit.py and sandboxfile_watch.py)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

import pytest

from engine.errors import ConfigError
from msb_tui import sandboxfile_edit as edits
from msb_tui.sandboxfile_watch import file_changes
from tests.unit.helpers import STEP_TIMEOUT_S


def test_outline_lists_sandboxes_and_the_first_problem(sandboxfile: Path) -> None:
    text = sandboxfile.read_text()
    found = edits.outline(text, sandboxfile)
    assert found.names == ["api", "db", "worker"]
    assert found.raw["api"]["memory"] == 1024 and found.problem is None
    bad = edits.outline(text.replace("memory: 256", "memory: lots"), sandboxfile)
    assert bad.problem is not None
    assert "sandboxes.db.memory must be an integer number of MiB (got 'lots')" in bad.problem.message
    assert bad.problem.place() == ("db", "memory")
    no_image = edits.outline(text.replace("    image: busybox\n", ""), sandboxfile).problem
    assert no_image is not None and no_image.place() == ("db", None)
    with pytest.raises(ConfigError, match="not valid YAML"):
        edits.outline("sandboxes: [", sandboxfile)


@pytest.mark.parametrize(("field", "raw", "text"), [
    ("memory", 1024, "1024"),
    ("memory", None, ""),
    ("ports", ["8000:8000", "0.0.0.0:8080:80"], "8000:8000, 0.0.0.0:8080:80"),
    ("envs", ["LIST=a,b", 'Q="x"'], '"LIST=a,b", "Q=""x"""'),
    ("scripts", {"start": "python3 app.py", "test": "pytest -q"}, "start: python3 app.py\ntest: pytest -q"),
    ("scope", "group", "group"),
])  # fmt: skip
def test_field_text_and_value_round_trip(field: str, raw: object, text: str) -> None:
    assert edits.field_text(field, raw) == text
    expected = [] if field == "ports" and raw is None else raw
    assert edits.field_value(field, text) == expected


def test_field_value_keeps_what_is_not_a_number_for_validation() -> None:
    assert edits.field_value("memory", " lots ") == "lots"
    assert edits.field_value("cpus", "+2") == 2
    assert edits.field_value("volumes", "") == []
    with pytest.raises(ConfigError, match="scripts line 2 must be `name: command`"):
        edits.field_value("scripts", "start: a\nno colon here")


def test_field_problem_is_the_engines_message() -> None:
    assert edits.field_problem("memory", 1024) is None
    problem = edits.field_problem("memory", "lots")
    assert problem == edits.Problem("memory must be an integer number of MiB (got 'lots')",
                                    "write e.g. memory: 1024 (MiB, no unit, no quotes)")  # fmt: skip
    ports = edits.field_problem("ports", ["8000:8000", "x"])
    assert ports is not None and ports.message.startswith("ports[1] must be")
    image = edits.field_problem("image", None)
    assert image is not None and image.message == "image is required"
    assert edits.problem_text(problem) == problem.message + "\nhint: " + str(problem.hint)


def test_apply_add_remove_touch_only_their_entry(sandboxfile: Path) -> None:
    text = sandboxfile.read_text()
    values = {**edits.outline(text, sandboxfile).raw["db"], "memory": 512}
    applied = edits.apply_entry(text, sandboxfile, "db", values)
    assert applied == text.replace("    memory: 256\n", "    memory: 512\n")
    added = edits.add_entry(applied, sandboxfile, "web", " busybox ")
    assert added == applied + "  web:\n    image: busybox\n"
    with pytest.raises(ConfigError, match="already defines 'web'"):
        edits.add_entry(added, sandboxfile, "web", "busybox")
    with pytest.raises(ConfigError, match="image is required"):
        edits.add_entry(added, sandboxfile, "web2", "  ")
    with pytest.raises(ConfigError, match="api depends on 'db'"):
        edits.remove_entry(added, sandboxfile, "db")
    removed = edits.remove_entry(added, sandboxfile, "web")
    assert removed == applied


def test_read_and_write_disk(tmp_path: Path) -> None:
    path = tmp_path / "Sandboxfile"
    assert edits.read_disk(path) is None
    edits.write_disk(path, "# hi\nsandboxes:\n  a:\n    image: busybox   # kept\n")
    assert edits.read_disk(path) == "# hi\nsandboxes:\n  a:\n    image: busybox   # kept\n"
    path.write_bytes(b"\xff")
    with pytest.raises(ConfigError, match="not UTF-8"):
        edits.read_disk(path)


async def test_file_changes_sees_writes_and_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "Sandboxfile"
    path.write_text("sandboxes:\n")
    ready = asyncio.Event()
    async with aclosing(file_changes(path, ready, debounce_ms=50)) as changes:
        first = asyncio.ensure_future(anext(changes))  # the watcher starts with the iteration
        await asyncio.wait_for(ready.wait(), STEP_TIMEOUT_S)
        (tmp_path / "other").write_text("not watched")
        path.write_text("sandboxes: {}\n")
        await asyncio.wait_for(first, STEP_TIMEOUT_S)
        edits.write_disk(path, "sandboxes:\n  a:\n    image: busybox\n")  # temp file + rename
        await asyncio.wait_for(anext(changes), STEP_TIMEOUT_S)
