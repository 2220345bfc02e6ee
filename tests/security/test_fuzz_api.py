"""Property-based fuzzing of ``/api/v1/rpc`` and ``/mcp`` (Hypothesis), in-process over the FakeService
with auth on: a key for every namespace, one for ``t1``, one for ``t2``, an expired one, garbage, none.

Properties of every answer: no HTTP 5xx; an empty body (notifications) or JSON-RPC 2.0 (JSON, or
SSE-framed JSON on /mcp) whose error has an integer code; answered within 1 s; a bounded
allocation peak while serving it (tracemalloc). ``MSB_FUZZ_EXAMPLES`` sets the total number of
cases (default a few hundred; bench/security_fuzz.py runs ≥ 10,000); ``MSB_FUZZ_STATS`` names a
JSON file for the per-endpoint counts, worst latency and memory peak.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.repl.models import ReplResult
from engine.server.app import build_app
from engine.server.auth import make_key
from engine.server.fake_service import FakeService
from engine.server.mcp_app import _SeedCall
from engine.server.mcp_tools import TOOLS
from engine.server.rpc import METHODS
from engine.server.settings import Limits, ServerSettings

TOTAL = int(os.environ.get("MSB_FUZZ_EXAMPLES") or 200)
LATENCY_S = 1.0
PEAK_BOUND = 64 << 20
"""Bytes the server may allocate at once while answering one request (bodies are ≤ 1 MiB)."""
TRACED_BOUND = 256 << 20
"""Bytes traced in the whole test process (server, client and Hypothesis) at any request's peak."""
BODY_LIMIT = 1 << 20
SECRET = "f" * 32
KEYS = [make_key(SECRET), make_key(SECRET, namespace="t1"), make_key(SECRET, namespace="t2"),
        make_key(SECRET, now=0.0), "msb_garbage", None]  # fmt: skip
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SAFE_CODE = {"x = 1", "x", "1 + 1", "print('hi')", "raise ValueError('no')", "console.log(2)"}


class FuzzService(FakeService):
    """The fake runs REPL code with ``exec`` in this process: only a few known snippets run; any
    other code is handed over as a string literal (its text still travels every path)."""

    async def run_code(self, namespace: str, name: str, language: str, code: str,
                       timeout: float | None) -> ReplResult:  # fmt: skip
        return await super().run_code(namespace, name, language, code if code in SAFE_CODE else repr(code), timeout)


class Harness:
    """The app with its lifespan on a private event loop; ``send`` checks and counts every answer."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        settings_ = ServerSettings(storage=tmp, port=5555, limits=Limits(max_body_bytes=BODY_LIMIT))
        self.app = build_app(settings_, FuzzService(), secret=SECRET)
        self.ready, self.stop = asyncio.Event(), asyncio.Event()
        self.lifespan = self.loop.create_task(self._lifespan())
        self.loop.run_until_complete(asyncio.wait_for(self.ready.wait(), 10))
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5555", timeout=None)
        self.stats: dict[str, dict[str, float]] = {}
        self.peak = self.traced_peak = 0

    async def _lifespan(self) -> None:
        """One task enters and leaves the lifespan (the MCP SDK's task groups insist on it)."""
        async with self.app.router.lifespan_context(self.app):
            self.ready.set()
            await self.stop.wait()

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.stop.set()
        self.loop.run_until_complete(asyncio.wait_for(self.lifespan, 10))
        self.loop.close()

    def send(self, endpoint: str, method: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        gc.disable()  # a full collection of Hypothesis' heap is no latency of the server's
        try:
            t0 = time.perf_counter()
            r = self.loop.run_until_complete(self.client.request(method, endpoint, content=content, headers=headers))
            elapsed = time.perf_counter() - t0
        finally:
            gc.enable()
        traced_peak = tracemalloc.get_traced_memory()[1]
        peak = traced_peak - base
        s = self.stats.setdefault(endpoint, {"cases": 0, "5xx": 0, "max_latency_ms": 0.0})
        s["cases"] += 1
        s["5xx"] += r.status_code >= 500
        s["max_latency_ms"] = max(s["max_latency_ms"], elapsed * 1000)
        self.peak, self.traced_peak = max(self.peak, peak), max(self.traced_peak, traced_peak)
        assert r.status_code < 500, (r.status_code, r.text[:500], content[:300])
        assert elapsed < LATENCY_S, f"{elapsed:.2f} s for {content[:200]!r}"
        assert peak < PEAK_BOUND, f"{peak >> 20} MiB allocated for {content[:200]!r}"
        assert traced_peak < TRACED_BOUND, f"{traced_peak >> 20} MiB traced in all"
        for doc in documents(r):
            check_jsonrpc(doc)
        return r


def documents(r: httpx.Response) -> list[Any]:
    """The JSON-RPC documents of a response: none (empty body), one JSON body, or SSE ``data:`` events."""
    if not r.content:
        return []
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return [json.loads(r.content)]


def check_jsonrpc(doc: Any) -> None:
    assert isinstance(doc, dict) and doc.get("jsonrpc") == "2.0", doc
    assert ("result" in doc) != ("error" in doc) and "id" in doc, doc
    if "error" in doc:
        code = doc["error"].get("code")
        assert isinstance(code, int) and not isinstance(code, bool), doc
        assert isinstance(doc["error"].get("message"), str), doc


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    try:
        yield h
    finally:
        h.close()
        if started:
            tracemalloc.stop()
        if os.environ.get("MSB_FUZZ_STATS"):
            stats = {"endpoints": h.stats, "peak_request_bytes": h.peak, "peak_traced_bytes": h.traced_peak}
            Path(os.environ["MSB_FUZZ_STATS"]).write_text(json.dumps(stats))


def _fuzz(share: float) -> settings:
    """This test's part of the ``TOTAL`` cases."""
    return settings(max_examples=max(1, int(TOTAL * share)), deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])  # fmt: skip


# --- strategies --------------------------------------------------------------------------------

big_ints = st.sampled_from([2**63, -(2**64), 10**30, 10**4000])
leaves = st.none() | st.booleans() | st.integers() | big_ints | st.floats() | st.text(max_size=40)
json_values = st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=4), max_leaves=12)
names = st.sampled_from(["t1", "t2", "default", "*", "s1", "s2", "", "../x", "a" * 64, "ünï"]) | st.text(max_size=10)
ids = st.integers() | st.text(max_size=10) | st.none() | st.sampled_from([1.5, True, [], {}, 10**4000])
configs = st.none() | json_values | st.fixed_dictionaries({}, optional={
    "image": st.sampled_from(["microsandbox/python", "microsandbox/node", "/", "..", "~", "/etc"]) | st.text(),
    "memory": st.integers() | big_ints, "cpus": st.integers(), "envs": st.lists(st.text(max_size=10), max_size=3),
    "ephemeral": st.booleans(), "volumes": st.lists(st.text(max_size=20), max_size=2),
    "ports": st.lists(st.text(max_size=20), max_size=2), "scripts": st.dictionaries(st.text(max_size=5),
                                                                                   st.text(max_size=10))})  # fmt: skip
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "sandbox": names, "namespace": names, "config": configs,
    "language": st.sampled_from(["python", "node", "nodejs", "javascript", "ruby"]) | st.text(max_size=8),
    "code": st.sampled_from(sorted(SAFE_CODE)) | st.text(),
    "args": st.lists(st.text(max_size=20), max_size=4) | json_values,
    "command": st.sampled_from(["echo", "true", "false", "cat", "sleep", "sh"]) | st.text(max_size=10),
    "timeout": st.floats() | st.integers() | big_ints | st.text(max_size=4), "path": st.text(max_size=30),
    "content": st.text(max_size=100), "encoding": st.sampled_from(["utf-8", "base64", "rot13"]),
}  # fmt: skip


def params_for(fields: list[str]) -> st.SearchStrategy[Any]:
    """Params with some of ``fields`` (any value type), now and then an extra key, or no object at all."""
    known = st.fixed_dictionaries({}, optional={f: FIELDS.get(f, json_values) for f in fields})
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return known | st.builds(lambda a, b: {**b, **a}, known, extra) | json_values


def rpc_call(method: st.SearchStrategy[str], params: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({"jsonrpc": st.just("2.0") | json_values, "method": method},
                                 optional={"id": ids, "params": params})  # fmt: skip


rpc_docs = st.sampled_from(sorted(METHODS)).flatmap(
    lambda m: rpc_call(st.just(m), params_for(list(METHODS[m][0].model_fields)))
) | rpc_call(st.text(max_size=20), json_values) | json_values | st.lists(rpc_call(st.sampled_from(sorted(METHODS)),
                                                                                 json_values), max_size=3)  # fmt: skip
headers = st.fixed_dictionaries({"Content-Type": st.just("application/json")},
                                optional={"Authorization": st.sampled_from([f"Bearer {k}" for k in KEYS if k])})

tool_calls = st.sampled_from(sorted(TOOLS)).flatmap(lambda t: st.fixed_dictionaries(
    {"name": st.just(t), "arguments": params_for(list(TOOLS[t].model_fields))}))  # fmt: skip
mcp_requests = st.one_of(
    rpc_call(st.just("tools/call"), tool_calls | st.fixed_dictionaries({"name": st.text(max_size=12)},
                                                                       optional={"arguments": json_values})),
    rpc_call(st.just("prompts/get"), st.fixed_dictionaries(
        {"name": st.sampled_from(["create_python_sandbox", "create_node_sandbox"]) | st.text(max_size=10)},
        optional={"arguments": json_values})),
    rpc_call(st.sampled_from(["tools/list", "prompts/list", "resources/list", "resources/read", "ping",
                              "notifications/initialized", "logging/setLevel", "completion/complete"]), json_values),
    rpc_call(st.just("tools/call"), params_for(list(_SeedCall.model_fields))),  # seed-style, answered by us
    rpc_call(st.text(max_size=20), json_values), json_values,
)  # fmt: skip
initialize = rpc_call(st.just("initialize"), st.fixed_dictionaries({
    "protocolVersion": st.sampled_from(["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]) | st.text(max_size=10),
    "capabilities": st.just({}) | json_values, "clientInfo": st.just({"name": "fuzz", "version": "1"}) | json_values}))


def _encode(doc: Any, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- the properties ----------------------------------------------------------------------------


@_fuzz(0.35)
@given(doc=rpc_docs, ascii_only=st.booleans(), hdrs=headers)
def test_rpc_documents(harness: Harness, doc: Any, ascii_only: bool, hdrs: dict[str, str]) -> None:
    harness.send("/api/v1/rpc", "POST", _encode(doc, ascii_only), hdrs)


@_fuzz(0.3)
@given(docs=st.lists(initialize, min_size=1, max_size=1).flatmap(
    lambda first: st.lists(mcp_requests, max_size=3).map(lambda rest: first + rest)), hdrs=headers)  # fmt: skip
def test_mcp_sessions(harness: Harness, docs: list[Any], hdrs: dict[str, str]) -> None:
    """``initialize``, then random requests (the endpoint is stateless: each is its own POST)."""
    for doc in docs:
        harness.send("/mcp", "POST", _encode(doc, False), {**MCP_HEADERS, **hdrs})


printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
raw_bodies = st.one_of(
    st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 100_000).map(lambda n: b'{"method":"tools/call","params":{"tool_name":' + b"[" * n),
    st.integers(4000, 20_000).map(lambda n: b'{"jsonrpc":"2.0","method":"server.info","id":' + b"9" * n + b"}"),
    st.sampled_from([b"", b"null", b"NaN", b'{"jsonrpc":"2.0","method":"x","id":NaN}', b"\xff\xfe{",
                     b"x" * (BODY_LIMIT + 1), '{"jsonrpc":"2.0","method":"server.info","id":1}'.encode("utf-16")]),
)  # fmt: skip
raw_headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "application/x-www-form-urlencoded", "application/json; charset=latin-1", ""])
                    | printable,
    "Accept": st.sampled_from(["application/json", "text/event-stream", "*/*", ""]) | printable,
    "Authorization": st.sampled_from([f"Bearer {k}" for k in KEYS if k] + ["Bearer", "Basic x", ""]) | printable,
    "Origin": st.sampled_from(["http://127.0.0.1:5555", "https://evil.example", "null"]) | printable,
    "Host": st.sampled_from(["127.0.0.1:5555", "localhost", "evil.example:5555"]) | printable,
    "Mcp-Protocol-Version": st.sampled_from(["2025-06-18", "1999-01-01"]) | printable,
    "Mcp-Session-Id": printable,
})  # fmt: skip


@_fuzz(0.35)
@given(path=st.sampled_from(["/api/v1/rpc", "/mcp"]), body=raw_bodies, hdrs=raw_headers,
       method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
@example(path="/api/v1/rpc", body=b"[" * 5000 + b"]" * 5000, hdrs={}, method="POST")  # recursion limit: was a 500
@example(path="/api/v1/rpc", body=b"", hdrs={}, method="GET")  # was {"error": "use POST"}: not JSON-RPC
@example(path="/api/v1/rpc", body=b'{"jsonrpc":"2.0","method":"server.info","id":' + b"9" * 5000 + b"}", hdrs={},
         method="POST")  # an int past Python's 4300-digit limit: was a 500
@example(path="/mcp", body=b'{"method":"tools/call","params":{"tool_name":' + b"[" * 5000, hdrs={},
         method="POST")  # the seed-style pre-parse hit the recursion limit: was a 500
def test_raw_requests(harness: Harness, path: str, body: bytes, hdrs: dict[str, str], method: str) -> None:
    hdrs = {"Authorization": f"Bearer {KEYS[0]}", **MCP_HEADERS, **hdrs}
    harness.send(path, method, body, hdrs)
