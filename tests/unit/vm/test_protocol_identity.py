"""IDENTITY, RESUME and HELD: the codec, AgentClient's side, and the fake guest's emulation.

AgentClient is driven through an in-memory channel whose guest end the test plays by hand
(:class:`Peer`), so every answer — right, refused, wrong or missing — is the test's choice.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import ExecError, ProtocolError, VmCrashedError
from engine.vm import fake_codec as enc
from engine.vm import protocol as p
from engine.vm.agent import AgentClient
from engine.vm.fake import FakeBackend, FakeVm, MemoryChannel, _Pipe
from engine.vm.fake_codec import HostFrame, decode_host_frame
from engine.vm.protocol import T
from tests.unit.conftest import Launch
from tests.unit.helpers import STEP_TIMEOUT_S, vm_spec

T_S = STEP_TIMEOUT_S
ENTROPY = bytes(range(64))


def split(raw: bytes) -> tuple[int, int, bytes]:
    _len, kind, fid = p.parse_header(raw[: p.HEADER.size])
    return kind, fid, raw[p.HEADER.size :]


def held_body(version: int = 1, agent_version: bytes = b"v1", stage: bytes = b"root") -> bytes:
    return struct.pack(">I", version) + struct.pack(">I", len(agent_version)) + agent_version + \
        struct.pack(">I", len(stage)) + stage  # fmt: skip


# ---------------------------------------------------------------- encoding (host → guest)


def test_encode_identity_bytes() -> None:
    body = p.encode_identity(b"\x01" * 32, 0x0102030405060708, "sb-1.x_Y")
    assert body == (
        b"\x00\x00\x00\x20" + b"\x01" * 32 + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00\x00\x00\x08sb-1.x_Y"
    )
    f = decode_host_frame(*split(p.frame(T.IDENTITY, 9, body)))
    assert (f.kind, f.id, f.entropy, f.realtime_ns, f.hostname) == (T.IDENTITY, 9, b"\x01" * 32,
                                                                    0x0102030405060708, b"sb-1.x_Y")  # fmt: skip


@pytest.mark.parametrize("n", [32, 512])
def test_encode_identity_accepts_the_entropy_bounds(n: int) -> None:
    assert len(p.encode_identity(b"e" * n, 0, "h")) == 4 + n + 8 + 4 + 1


@pytest.mark.parametrize("n", [0, 31, 513])
def test_encode_identity_refuses_entropy_out_of_bounds(n: int) -> None:
    with pytest.raises(ProtocolError, match="32-512"):
        p.encode_identity(b"e" * n, 0, "h")


def test_encode_resume_bytes() -> None:
    params = "msb.upper=/dev/vdb msb.sync=1 msb.hostname=sb"
    body = p.encode_resume(params)
    assert body == struct.pack(">I", len(params)) + params.encode()
    f = decode_host_frame(*split(p.frame(T.RESUME, 0, body)))
    assert (f.kind, f.id, f.params) == (T.RESUME, 0, params.encode())
    assert p.encode_resume("") == b"\0\0\0\0"


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (T.IDENTITY, p.encode_identity(ENTROPY, 1, "h")[:-1]),
        (T.IDENTITY, p.encode_identity(ENTROPY, 1, "h") + b"x"),
        (T.RESUME, p.encode_resume("a")[:-1]),
        (T.RESUME, p.encode_resume("a") + b"\0"),
    ],
)
def test_the_fake_decoder_is_strict_about_structure(kind: T, body: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"truncated|trailing"):
        decode_host_frame(kind, 1, body)


# ---------------------------------------------------------------- decoding HELD (guest → host)


def test_held_round_trip() -> None:
    raw = enc.held(agent_version=b"1.2.3")
    assert raw == p.frame(T.HELD, 0, held_body(agent_version=b"1.2.3"))
    f = p.decode_guest_frame(*split(raw))
    assert isinstance(f, p.Held)
    assert (f.id, f.kind, f.version, f.agent_version, f.stage) == (0, "held", 1, "1.2.3", "root")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (held_body(stage=b"ready"), "invalid frame 0x4c"),
        (held_body(stage=b""), "invalid frame 0x4c"),
        (held_body(stage=b"r" * 17), "exceeds 16"),
        (held_body(agent_version=b"v" * 257), "exceeds 256"),
        (held_body()[:-1], "truncated"),
        (held_body()[:3], "truncated"),
        (b"", "truncated"),
        (held_body() + b"\0", "1 trailing bytes"),
    ],
    ids=["bad-stage", "empty-stage", "long-stage", "long-version", "cut-stage", "cut-version", "empty", "trailing"],
)
def test_bad_held_is_a_protocol_error(body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        p.decode_guest_frame(T.HELD, 0, body)


# ---------------------------------------------------------------- AgentClient, by hand


class Peer:
    """The guest end of an in-memory channel, played by the test."""

    def __init__(self) -> None:
        self.to_guest, self.from_guest = _Pipe(), _Pipe()
        self.channel = MemoryChannel(self.to_guest, self.from_guest)

    async def recv(self) -> HostFrame:
        """The next host frame (bounded wait)."""
        reader = self.to_guest.reader
        async with asyncio.timeout(T_S):
            length, kind, _flags, _res, fid = p.HEADER.unpack(await reader.readexactly(p.HEADER.size))
            return decode_host_frame(kind, fid, await reader.readexactly(length - 8))

    def send(self, raw: bytes) -> None:
        self.from_guest.write(raw)


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, AgentClient]]:
    guest = Peer()
    client = AgentClient(guest.channel)
    yield guest, client
    await client.close()


Pair = tuple[Peer, AgentClient]


def identify(client: AgentClient, hostname: str = "sb") -> asyncio.Task[None]:
    return asyncio.create_task(client.identify(entropy=ENTROPY, realtime_ns=123, hostname=hostname))


async def test_identify_sends_identity_and_returns_on_errno_0(peer: Pair) -> None:
    guest, client = peer
    task = identify(client, "new-name")
    f = await guest.recv()
    assert (f.kind, f.entropy, f.realtime_ns, f.hostname) == (T.IDENTITY, ENTROPY, 123, b"new-name") and f.id != 0
    guest.send(enc.result(f.id))
    await asyncio.wait_for(task, T_S)
    assert client.dead is None and not client._routes


async def test_identify_refused_is_a_protocol_error_and_keeps_the_channel(peer: Pair) -> None:
    guest, client = peer
    task = identify(client)
    f = await guest.recv()
    guest.send(enc.result(f.id, errno.EPERM, b"RNDADDENTROPY: Operation not permitted"))
    with pytest.raises(ProtocolError, match="could not take a fresh identity: RNDADDENTROPY"):
        await asyncio.wait_for(task, T_S)
    assert client.dead is None and not client._routes  # the caller decides to drop the VM
    ping = asyncio.create_task(client.ping(b"x"))
    f = await guest.recv()
    guest.send(enc.pong(f.id, b"x"))
    await asyncio.wait_for(ping, T_S)


async def test_identify_answered_with_something_else_is_a_protocol_error(peer: Pair) -> None:
    guest, client = peer
    task = identify(client)
    f = await guest.recv()
    guest.send(enc.pong(f.id, b""))
    with pytest.raises(ProtocolError, match="unexpected pong for IDENTITY"):
        await asyncio.wait_for(task, T_S)


async def test_identify_with_bad_entropy_sends_nothing(peer: Pair) -> None:
    guest, client = peer
    with pytest.raises(ProtocolError, match="32-512"):
        await client.identify(entropy=b"short", realtime_ns=0, hostname="sb")
    assert not client._routes
    ping = asyncio.create_task(client.ping(b"first"))
    f = await guest.recv()
    assert f.kind == T.PING  # the first frame the guest sees
    guest.send(enc.pong(f.id, b"first"))
    await asyncio.wait_for(ping, T_S)


async def test_identify_on_a_dying_channel_is_a_crash(peer: Pair) -> None:
    guest, client = peer
    task = identify(client)
    await guest.recv()
    guest.from_guest.close()
    with pytest.raises(VmCrashedError):
        await asyncio.wait_for(task, T_S)


async def test_wait_held_then_resume_then_ready(peer: Pair) -> None:
    guest, client = peer
    guest.send(enc.held(agent_version=b"agent-7"))
    held = await asyncio.wait_for(client.wait_held(), T_S)
    assert (held.stage, held.agent_version, held.version) == ("root", "agent-7", 1)
    await client.resume("msb.upper=tmpfs msb.hostname=sb")
    f = await guest.recv()
    assert (f.kind, f.id, f.params) == (T.RESUME, 0, b"msb.upper=tmpfs msb.hostname=sb")
    guest.send(enc.ready(timings=[(b"root", 5)]))
    ready = await asyncio.wait_for(client.wait_ready(), T_S)
    assert ready.timings_ns == {"root": 5}


async def test_wait_held_refuses_another_protocol_version(peer: Pair) -> None:
    guest, client = peer
    guest.send(enc.held(version=2))
    with pytest.raises(ProtocolError, match="protocol 2"):
        await asyncio.wait_for(client.wait_held(), T_S)


async def test_wait_held_when_the_channel_closes(peer: Pair) -> None:
    guest, client = peer
    guest.from_guest.close()
    with pytest.raises(VmCrashedError):
        await asyncio.wait_for(client.wait_held(), T_S)


async def test_a_bad_held_drops_the_guest(peer: Pair) -> None:
    guest, client = peer
    guest.send(p.frame(T.HELD, 0, held_body(stage=b"ready")))
    with pytest.raises(ProtocolError, match="invalid frame 0x4c"):
        await asyncio.wait_for(client.wait_held(), T_S)
    assert isinstance(client.dead, ProtocolError)


# ---------------------------------------------------------------- the fake guest


async def raw_vm(tmp_path: Path, **spec_kw: object) -> FakeVm:
    """A fake VM read without AgentClient, so the test sees every frame (READY/HELD consumed)."""
    vm = await FakeBackend(tmp_dir=tmp_path).launch(vm_spec(tmp_path, name="boot-name", **spec_kw))
    first = await asyncio.wait_for(vm.channel.recv(), T_S)
    assert first.kind == ("held" if spec_kw.get("template_stage") else "ready")
    return vm


async def test_fake_guest_takes_an_identity(launch: Launch) -> None:
    vm, client = await launch()
    assert vm.hostname == "unit"  # the spec's name, as msb.hostname= gives it at boot
    now = time.time_ns()
    await asyncio.wait_for(client.identify(entropy=ENTROPY, realtime_ns=now, hostname="fresh-name"), T_S)
    assert vm.hostname == vm.guest.hostname == "fresh-name"
    (got,) = vm.guest.identities
    assert (got.entropy, got.realtime_ns, got.hostname) == (ENTROPY, now, b"fresh-name")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (p._b(b"e" * 31) + bytes(8) + p._b(b"h"), "entropy must be 32-512 bytes"),
        (p._b(b"e" * 513) + bytes(8) + p._b(b"h"), "entropy must be 32-512 bytes"),
        (p._b(ENTROPY) + bytes(8) + p._b(b""), "hostname must be"),
        (p._b(ENTROPY) + bytes(8) + p._b(b"h" * 65), "hostname must be"),
        (p._b(ENTROPY) + bytes(8) + p._b(b"bad name"), "hostname must be"),
        (p._b(ENTROPY) + bytes(8) + p._b(b"a/b"), "hostname must be"),
        (p._b(ENTROPY) + bytes(7), "truncated"),
        (p._b(ENTROPY) + bytes(8) + p._b(b"h") + b"x", "trailing"),
    ],
    ids=["entropy-31", "entropy-513", "no-name", "name-65", "space", "slash", "truncated", "trailing"],
)
async def test_fake_guest_refuses_a_bad_identity_with_einval(tmp_path: Path, body: bytes, why: str) -> None:
    vm = await raw_vm(tmp_path)
    try:
        await vm.channel.send(p.frame(T.IDENTITY, 5, body))
        res = await asyncio.wait_for(vm.channel.recv(), T_S)
        assert isinstance(res, p.Result) and res.id == 5 and res.errno == errno.EINVAL
        assert res.message.startswith("IDENTITY: ") and why in res.message
        assert vm.hostname == "boot-name" and vm.guest.identities == []
    finally:
        await vm.kill()


async def test_fake_guest_logs_an_identity_with_id_0(tmp_path: Path) -> None:
    vm = await raw_vm(tmp_path)
    try:
        await vm.channel.send(p.frame(T.IDENTITY, 0, p.encode_identity(ENTROPY, 0, "x")))
        log = await asyncio.wait_for(vm.channel.recv(), T_S)
        assert isinstance(log, p.Log) and "request id 0" in log.message
        assert vm.hostname == "boot-name"
    finally:
        await vm.kill()


@pytest.mark.parametrize("how", ["attribute", "misbehave"])
async def test_fake_guest_can_refuse_its_identity(launch: Launch, how: str) -> None:
    if how == "attribute":
        vm, client = await launch()
        vm.guest.refuse_identity = True
    else:
        vm, client = await launch("refuse_identity")
    with pytest.raises(ProtocolError, match="fake refusal"):
        await asyncio.wait_for(client.identify(entropy=ENTROPY, realtime_ns=0, hostname="other"), T_S)
    assert vm.hostname == "unit" and vm.guest.identities == []
    assert (await client.exec(["true"])).success  # still serving


async def test_fake_template_boot_is_held_until_resume(tmp_path: Path) -> None:
    vm = await FakeBackend(tmp_dir=tmp_path).launch(vm_spec(tmp_path, name="msb-template", template_stage="root"))
    client = AgentClient(vm.channel)
    try:
        async with asyncio.timeout(T_S):
            held = await client.wait_held()
            assert held.stage == "root" and vm.guest.held
            with pytest.raises(ExecError) as info:
                await client.exec(["true"])
            assert info.value.errno == errno.EAGAIN
            await client.ping(b"held")
            await client.identify(entropy=ENTROPY, realtime_ns=1, hostname="restored")
            assert vm.hostname == "restored"
            await client.resume("msb.upper=tmpfs msb.hostname=resumed-name msb.net=1")
            await client.wait_ready()
            assert not vm.guest.held and vm.hostname == "resumed-name"
            assert vm.guest.resume_params == "msb.upper=tmpfs msb.hostname=resumed-name msb.net=1"
            assert (await client.exec(["true"])).success
    finally:
        await client.close()
        await vm.kill()


async def test_fake_guest_logs_resume_when_not_held(launch: Launch, caplog: pytest.LogCaptureFixture) -> None:
    vm, client = await launch()
    with caplog.at_level(logging.INFO, logger="engine.vm.agent"):
        await client.resume("msb.hostname=sneaky")
        await asyncio.wait_for(client.ping(b"still"), T_S)
    assert "not held" in caplog.text and vm.hostname == "unit" and vm.guest.resume_params is None
