"""Attacks on the guide's seed-style MCP shapes (engine/server/mcp_app.py), in-process with auth on:
``prompts/get`` with ``prompt_name`` and ``tools/call`` whose ``command`` runs through the sandbox's
``/bin/sh -c``. Both are answered before the MCP SDK, so the checks the SDK would make are ours."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.server.auth import make_key
from tests.security.test_fuzz_api import KEYS, MCP_HEADERS, SECRET, Harness, documents

T1 = KEYS[1]
ALL = KEYS[0]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("seed"))
    try:
        yield h
    finally:
        h.close()


def post(h: Harness, doc: Any, key: str | None) -> tuple[int, dict[str, Any]]:
    hdrs = {**MCP_HEADERS, **({"Authorization": f"Bearer {key}"} if key else {})}
    r = h.send("/mcp", "POST", json.dumps(doc).encode(), hdrs)
    [body] = documents(r)
    return r.status_code, body


def prompt(params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": params}


def test_seed_prompts_need_a_key(harness: Harness) -> None:
    """Attack: ask for a prompt without a key, with an expired key, with garbage."""
    for key in (None, make_key(SECRET, now=0.0), "msb_garbage"):
        status, body = post(harness, prompt({"prompt_name": "create_python_sandbox"}), key)
        assert status == 401 and "result" not in body


@pytest.mark.parametrize("params", [
    {"prompt_name": 7}, {"prompt_name": ["create_python_sandbox"]}, {"prompt_name": {"$ref": "x"}},
    {"prompt_name": None}, {"prompt_name": "create_python_sandbox", "arguments": ["a", "b"]},
    {"prompt_name": "create_python_sandbox", "arguments": {"sandbox_name": {"nested": [1]}}},
    {"prompt_name": "../../etc/passwd"}, {"prompt_name": "create_python_sandbox\u0000"},
])  # fmt: skip
def test_hostile_seed_prompt_params_are_invalid_params(harness: Harness, params: dict[str, Any]) -> None:
    """Attack: wrong types, nesting and path-like names in the seed-style prompt call."""
    status, body = post(harness, prompt(params), T1)
    assert status == 200 and body["error"]["code"] == -32602, body


def test_a_huge_prompt_name_is_not_echoed_back(harness: Harness) -> None:
    """Attack: a 512 KiB prompt name, to make the error message carry it back (amplification, log spam)."""
    name = "p" * (512 << 10)
    status, body = post(harness, prompt({"prompt_name": name}), T1)
    assert status == 200 and body["error"]["code"] == -32602
    assert len(str(body)) < 1024


def test_the_shell_line_reaches_the_guest_as_one_argument(harness: Harness, tmp_path: Path) -> None:
    """Attack: host-side command substitution in a seed-style command; and the shell path across namespaces.
    The line must travel as one ``sh -c`` argument to the guest (the FakeService here), never be
    interpreted on the host, and a t1 key still may not run it in t2."""
    marker = tmp_path / "pwned"
    line = f"echo hi && $(touch {marker}) ; `touch {marker}` | cat > {marker}"
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"tool_name": "sandbox.command.run", "sandbox_name": "s1", "namespace": "t2", "command": line},
    }
    status, body = post(harness, call, T1)
    assert status == 403 and "result" not in body
    start = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "sandbox.start",
        "params": {"sandbox": "s1", "namespace": "t1", "config": {"image": "microsandbox/python"}},
    }
    r = harness.send(
        "/api/v1/rpc",
        "POST",
        json.dumps(start).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {T1}"},
    )
    assert "result" in r.json(), r.text
    call["params"] = {**call["params"], "namespace": "t1"}  # type: ignore[dict-item]
    status, body = post(harness, call, T1)
    assert status == 200 and "result" in body, body
    assert not marker.exists()


@pytest.mark.parametrize("method", [["prompts/get"], {"m": 1}, 7, None])
def test_an_unhashable_method_beside_a_seed_key_is_no_crash(harness: Harness, method: Any) -> None:
    """Attack: ``method`` of a type the seed dispatch cannot look up, with ``prompt_name`` present."""
    doc = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"prompt_name": "x", "tool_name": "y"}}
    status, body = post(harness, doc, T1)
    assert status < 500 and "error" in body
