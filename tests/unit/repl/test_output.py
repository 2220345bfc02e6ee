"""Output lines, order and bounds (engine/repl/output.py)."""

from __future__ import annotations

from engine.repl.models import OutputLine
from engine.repl.output import OutputCollector


def pairs(lines: list[OutputLine]) -> list[tuple[str, str]]:
    return [(line.stream, line.text) for line in lines]


def test_lines_split_on_newline_across_chunks() -> None:
    out = OutputCollector()
    out.add("stdout", "a\nb")
    out.add("stderr", "e\n")
    out.add("stdout", "c\n\n")
    assert pairs(out.finish()) == [("stdout", "a"), ("stderr", "e"), ("stdout", "bc"), ("stdout", "")]


def test_partial_lines_come_last_in_the_order_they_started() -> None:
    out = OutputCollector()
    out.add("stderr", "err-partial")
    out.add("stdout", "out-partial")
    out.add("stdout", "...")
    out.note("a note")
    assert pairs(out.finish()) == [("stderr", "err-partial"), ("stdout", "out-partial..."), ("stderr", "a note")]


def test_byte_limit_truncates_with_a_note_and_keeps_notes() -> None:
    out = OutputCollector(max_bytes=10)
    out.add("stdout", "12345\n")
    out.add("stdout", "6789abcdef\n")
    out.add("stdout", "more\n")
    out.note("timed out")
    lines = out.finish()
    assert pairs(lines)[:2] == [("stdout", "12345"), ("stdout", "6789")]
    assert lines[2].text == "[output truncated: a run keeps at most 10 bytes and 100000 lines of output]"
    assert pairs(lines)[3] == ("stderr", "timed out")
    assert out.bytes == 10


def test_byte_limit_does_not_split_a_character() -> None:
    out = OutputCollector(max_bytes=4)
    out.add("stdout", "ab✓")  # ✓ is 3 bytes: only "ab" fits
    assert pairs(out.finish())[0] == ("stdout", "ab")


def test_line_limit() -> None:
    out = OutputCollector(max_lines=3)
    out.add("stdout", "1\n2\n3\n4\n5\n")
    lines = out.finish()
    assert [line.text for line in lines[:3]] == ["1", "2", "3"] and "truncated" in lines[3].text
    assert len(lines) == 4


def test_lone_surrogates_are_replaced() -> None:
    out = OutputCollector()
    out.add("stdout", "a\ud800b\n")
    assert pairs(out.finish()) == [("stdout", "a?b")]
