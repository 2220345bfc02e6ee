"""The host↔driver protocol (engine/repl/wire.py)."""

from __future__ import annotations

import json

import pytest

from engine.errors import ProtocolError
from engine.repl.wire import Done, LineBuffer, Out, Ready, decode, encode_run


def test_encode_run_is_one_json_line() -> None:
    line = encode_run(3, "print('a\\nb')\n", 100)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "type": "run", "id": 3, "code": "print('a\\nb')\n", "max_output": 100, "interruptible": True,
    }  # fmt: skip
    assert json.loads(encode_run(4, "", 1, interruptible=False))["interruptible"] is False


def test_decode_each_message() -> None:
    assert decode(b'{"type":"ready","pid":5,"version":"3.11"}') == Ready(type="ready", pid=5, version="3.11")
    assert decode(b'{"type":"out","id":1,"stream":"stderr","data":"x"}') == Out(
        type="out", id=1, stream="stderr", data="x"
    )
    assert decode(b'{"type":"done","id":1,"status":"error"}') == Done(type="done", id=1, status="error")


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"type":"shell","cmd":"rm"}',
        b'{"type":"out","id":1,"stream":"fd3","data":"x"}',
        b'{"type":"done","id":"one","status":"success"}',
        b'{"type":"done","id":1,"status":"maybe"}',
    ],
)
def test_decode_refuses_anything_else(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        decode(line)


def test_line_buffer_splits_across_chunks() -> None:
    buf = LineBuffer(limit=10)
    assert buf.feed(b"ab") == []
    assert buf.feed(b"c\n\nde\nf") == [b"abc", b"de"]
    assert buf.feed(b"g\n") == [b"fg"]


def test_line_buffer_bounds_a_line() -> None:
    buf = LineBuffer(limit=10)
    buf.feed(b"0123456789")
    with pytest.raises(ProtocolError, match="longer than 10 bytes"):
        buf.feed(b"x")
    with pytest.raises(ProtocolError):
        LineBuffer(limit=4).feed(b"12345\nok\n")
