"""Black-box attacks on the real server's limits (issue 15): published ports off loopback or
below 1024, sandboxes past the server's and the namespace's quota (concurrently, to race the
check), memory and CPUs past the operator's maxima, file writes past the size limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.security import server_proc
from tests.security.conftest import FILE_LIMIT
from tests.security.server_proc import ServerProc, free_port, is_error, sh, uniq
from tests.security.server_proc import sandbox_start as start
from tests.security.server_proc import sandbox_stop as stop

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def quota_srv(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Iterator[ServerProc]:
    """A server that runs at most 2 sandboxes, 1 per namespace."""
    base = tmp_path_factory.mktemp("quota")
    env = {"MSB_MAX_SANDBOXES": "2", "MSB_MAX_SANDBOXES_PER_NAMESPACE": "1"}
    yield from server_proc.served(base / "state", base / "server.log", env=env)


def _refused(srv: ServerProc, key: str, ns: str, name: str, doc: dict[str, Any], what: str) -> None:
    """Fail if ``doc`` is not an error (stopping the sandbox it started first)."""
    if not is_error(doc):
        stop(srv, key, ns, name)
        pytest.fail(f"{what} was accepted: {doc}")


def _names_limit(message: str) -> bool:
    """The refusal says a limit was hit (a client must tell it from a broken sandbox)."""
    return "limit" in message.lower() or "quota" in message.lower()


# --- 5. published ports -------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "[::]", "::"])
def test_port_off_loopback_is_refused(srv: ServerProc, t1: str, busybox: str, address: str) -> None:
    """Attack: publish a sandbox port on every host interface (``0.0.0.0:P:80``, ``[::]:P:80``),
    exposing it to the network the host is on."""
    name, port = uniq("port"), f"{address}:{free_port()}:80"
    _refused(srv, t1, "t1", name, start(srv, t1, "t1", name, image=busybox, ephemeral=True, ports=[port]), port)


@pytest.mark.parametrize("port", ["80:80", "127.0.0.1:22:80", "1023:80"])
def test_privileged_host_port_is_refused(srv: ServerProc, t1: str, busybox: str, port: str) -> None:
    """Attack: take a privileged host port (below 1024) that a host service should own."""
    name = uniq("priv")
    _refused(srv, t1, "t1", name, start(srv, t1, "t1", name, image=busybox, ephemeral=True, ports=[port]), port)


def test_loopback_port_works(srv: ServerProc, t1: str, busybox: str) -> None:
    """Not an attack: ``"P:80"`` publishes on loopback (the default) and starts."""
    name = uniq("lo")
    doc = start(srv, t1, "t1", name, image=busybox, ephemeral=True, ports=[f"{free_port()}:80"])
    assert "result" in doc, f"{doc}\n{srv.log_tail()}"
    stop(srv, t1, "t1", name)


def test_port_of_another_tenant_or_the_server_is_refused(srv: ServerProc, t1: str, t2: str, busybox: str) -> None:
    """Attack: publish on the host port another tenant's sandbox already publishes, or on the
    server's own API port, to receive their connections."""
    theirs, name, port = uniq("held"), uniq("hijack"), free_port()
    assert "result" in start(srv, t2, "t2", theirs, image=busybox, ephemeral=True, ports=[f"{port}:8000"])
    try:
        for taken in (port, int(srv.url.rsplit(":", 1)[1])):
            doc = start(srv, t1, "t1", name, image=busybox, ephemeral=True, ports=[f"{taken}:8000"])
            _refused(srv, t1, "t1", name, doc, f"host port {taken}, already taken")
    finally:
        stop(srv, t2, "t2", theirs)


# --- 6. memory, cpus, file size -----------------------------------------------------------------


@pytest.mark.parametrize("config", [{"memory": 4097}, {"memory": 1 << 20}, {"cpus": 5}, {"cpus": 64}])
def test_over_the_operator_maxima_is_refused(srv: ServerProc, t1: str, busybox: str, config: dict[str, int]) -> None:
    """Attack: ask for more memory (MiB) or CPUs than the operator allows per sandbox (defaults
    4096 MiB, 4 CPUs), to starve the host and the other tenants."""
    name = uniq("big")
    _refused(srv, t1, "t1", name, start(srv, t1, "t1", name, image=busybox, ephemeral=True, **config), str(config))


def test_file_write_over_the_limit_is_refused(srv: ServerProc, t1: str, busybox: str) -> None:
    """Attack: write a file larger than ``MSB_MAX_FILE_BYTES`` through MCP's ``sandbox_file_write``
    (64 KiB on this server); one under the limit still works."""
    name = uniq("file")
    assert "result" in start(srv, t1, "t1", name, image=busybox, ephemeral=True)
    try:
        small = srv.mcp_tool("sandbox_file_write", {"namespace": "t1", "sandbox": name, "path": "/root/ok",
                                                    "content": "x" * 1000}, t1)  # fmt: skip
        assert small["_status"] == 200 and not small["result"].get("isError"), small
        big = srv.mcp_tool("sandbox_file_write", {"namespace": "t1", "sandbox": name, "path": "/root/big",
                                                  "content": "x" * (FILE_LIMIT + 1)}, t1)  # fmt: skip
        refused = big["_status"] >= 400 or "error" in big or big["result"].get("isError") is True
        size = sh(srv, t1, "t1", name, "wc -c < /root/big 2>/dev/null; true")["stdout"].strip()
        assert refused and not size, f"a {FILE_LIMIT + 1}-byte write was accepted ({size} bytes on disk): {big}"
    finally:
        stop(srv, t1, "t1", name)


# --- 6. quotas ------------------------------------------------------------------------------------


async def _start_many(srv: ServerProc, key: str, starts: list[tuple[str, str]], busybox: str) -> list[dict[str, Any]]:
    """``sandbox.start`` of every ``(namespace, name)`` at once."""
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:

        async def one(ns: str, name: str) -> dict[str, Any]:
            params = {"namespace": ns, "sandbox": name, "config": {"image": busybox, "ephemeral": True, "memory": 128}}
            r = await http.post(f"{srv.url}/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "sandbox.start",
                                                               "params": params})  # fmt: skip
            return {**r.json(), "_status": r.status_code}

        return list(await asyncio.gather(*(one(ns, n) for ns, n in starts)))


async def test_concurrent_starts_do_not_race_past_the_limit(quota_srv: ServerProc, busybox: str) -> None:
    """Attack: ten ``sandbox.start`` calls at once (ten namespaces, a ``*`` key) on a server whose
    limit is 2: a check-then-start race lets them all through."""
    key = quota_srv.keygen("*")
    starts = [(f"q{i}", uniq("race")) for i in range(10)]
    answers = await _start_many(quota_srv, key, starts, busybox)
    started = [s for s, a in zip(starts, answers, strict=True) if "result" in a]
    try:
        alive = server_proc.running(quota_srv, key, "*")
        refusals = [a["error"]["message"] for a in answers if "error" in a]
        assert 1 <= len(started) <= 2, f"{len(started)} of 10 started past a limit of 2: {answers}"
        assert len(alive) <= 2, f"{len(alive)} sandboxes run on a server limited to 2: {alive}"
        assert all(_names_limit(m) for m in refusals), refusals
    finally:
        for ns, name in started:
            stop(quota_srv, key, ns, name)


def test_namespace_quota(quota_srv: ServerProc, busybox: str) -> None:
    """Attack: one tenant takes every slot. With 1 sandbox per namespace, t1's second start is
    refused (the limit named) while t2 can still start one."""
    t1, t2 = quota_srv.keygen("t1"), quota_srv.keygen("t2")
    first, second, other = uniq("one"), uniq("two"), uniq("t2")
    assert "result" in start(quota_srv, t1, "t1", first, image=busybox, ephemeral=True, memory=128)
    try:
        doc = start(quota_srv, t1, "t1", second, image=busybox, ephemeral=True, memory=128)
        _refused(quota_srv, t1, "t1", second, doc, "a second sandbox in t1")
        assert _names_limit(str(doc["error"]["message"])), doc
        assert "result" in start(quota_srv, t2, "t2", other, image=busybox, ephemeral=True, memory=128)
        stop(quota_srv, t2, "t2", other)
    finally:
        stop(quota_srv, t1, "t1", first)


async def test_concurrent_starts_in_one_namespace(quota_srv: ServerProc, busybox: str) -> None:
    """Attack: five ``sandbox.start`` calls at once in one namespace whose quota is 1."""
    key = quota_srv.keygen("t1")
    starts = [("t1", uniq("burst")) for _ in range(5)]
    answers = await _start_many(quota_srv, key, starts, busybox)
    started = [s for s, a in zip(starts, answers, strict=True) if "result" in a]
    try:
        assert len(started) == 1, f"{len(started)} of 5 started in a namespace limited to 1: {answers}"
    finally:
        for ns, name in started:
            stop(quota_srv, key, ns, name)


def test_refused_starts_do_not_keep_a_slot(quota_srv: ServerProc, busybox: str) -> None:
    """Attack: fill the quota with starts that fail (a missing volume, too much memory, a port
    off loopback, a directory image): a reservation that is not given back on the error path
    locks the namespace, and then the server, out."""
    key = quota_srv.keygen("t1")
    bad: list[dict[str, Any]] = [{"volumes": ["missing:/m"]}, {"memory": 1 << 19}, {"ports": ["0.0.0.0:18080:80"]},
                                 {"image": "/"}, {"volumes": ["missing:/m"]}]  # fmt: skip
    for config in bad:
        name = uniq("fail")
        doc = start(quota_srv, key, "t1", name, **{"image": busybox, "ephemeral": True, "memory": 128, **config})
        _refused(quota_srv, key, "t1", name, doc, str(config))
    name = uniq("after")
    doc = start(quota_srv, key, "t1", name, image=busybox, ephemeral=True, memory=128)
    assert "result" in doc, f"after {len(bad)} refused starts the namespace is full: {doc}"
    stop(quota_srv, key, "t1", name)


# --- host capacity: no tenant fills the host --------------------------------------------------


def test_a_host_below_its_memory_reserve_refuses_every_tenant_cleanly(
    tmp_path_factory: pytest.TempPathFactory, busybox: str
) -> None:
    """Attack: start sandboxes until the host runs out of memory (here the reserve is set above
    what any host has). Every start is refused with -32032 before anything boots, nothing runs,
    and nothing is left in the server's run directory."""
    from engine.server.reclaim import run_base

    base = tmp_path_factory.mktemp("capacity")
    env = {"MSB_HOST_RESERVE_MIB": str(1 << 30)}
    for srv in server_proc.served(base / "state", base / "server.log", env=env):
        key = srv.keygen("*")
        for i in range(3):
            doc = start(srv, key, "t1", f"fill-{i}", image=busybox, ephemeral=True, memory=128)
            assert doc.get("error", {}).get("code") == -32032, doc
            assert "below its reserve" in doc["error"]["message"]
            assert "MSB_HOST_RESERVE_MIB" in doc["error"]["data"]["hint"]
        assert server_proc.running(srv, key, "t1") == []
        assert not list(run_base(srv.state).iterdir())
