"""Tests of the REPL history (msb_tui/history.py): where it lives, walking it, bounding it."""

from __future__ import annotations

from pathlib import Path

import pytest

from msb_tui.history import History, history_path


def test_path_next_to_the_sandboxfile(tmp_path: Path) -> None:
    path = history_path(tmp_path / "Sandboxfile", "api", "python")
    assert path == tmp_path / ".menv" / "tui" / "history-api-python.jsonl"


def test_path_in_the_user_cache_without_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert history_path(None, "a/b", "node", cache_dir=tmp_path) == tmp_path / "msb" / "tui" / "history-a_b-node.jsonl"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert history_path(None, "api", "node").parent == tmp_path / "xdg" / "msb" / "tui"


def test_walk_back_and_forth_keeps_the_draft(tmp_path: Path) -> None:
    history = History(tmp_path / "h.jsonl")
    assert history.previous("draft") is None and history.next() is None
    for code in ("a = 1", "b = 2", "b = 2", "   "):
        history.add(code)
    assert history.entries == ["a = 1", "b = 2"]  # repeats and blanks are not kept
    assert history.previous("draft") == "b = 2"
    assert history.previous("ignored") == "a = 1"
    assert history.previous("ignored") is None  # at the oldest
    assert history.next() == "b = 2"
    assert history.next() == "draft"
    assert history.next() is None


def test_persists_and_skips_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "h.jsonl"
    History(path).add("print('x')\nprint('y')")
    with path.open("a") as out:
        out.write('{"code": "half-writ\nnot json\n[1, 2]\n{"code": 3}\n')
    assert History(path).entries == ["print('x')\nprint('y')"]


def test_bounded(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    history = History(path, limit=10)
    for i in range(25):
        history.add(f"x = {i}")
    assert history.entries == [f"x = {i}" for i in range(15, 25)]
    assert len(path.read_text().splitlines()) <= 11  # trimmed in batches of a tenth of the limit
    assert History(path, limit=10).entries == history.entries


def test_unwritable_file_raises_oserror(tmp_path: Path) -> None:
    (tmp_path / "h.jsonl").mkdir()
    with pytest.raises(OSError):
        History(tmp_path / "h.jsonl")
    history = History(tmp_path / "h.jsonl", load=False)
    with pytest.raises(OSError):
        history.add("x = 1")
    assert history.entries == ["x = 1"]
