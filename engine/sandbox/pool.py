"""A warm pool: sandboxes started ahead of time, handed out on request (docs/instant.md).

Each configured shape (a :class:`PoolShape`: the sandbox a request must match) keeps up to
``size`` members that are started (restored from the shape's template on QEMU), warmed (a
first command, optionally a REPL) and idle. :meth:`WarmPool.take` hands one out for a spec
of that shape after giving it the new sandbox's identity — fresh entropy, the clock, its
name — and a refill task starts a replacement in the background. A member whose VM died is
dropped and replaced, never handed out.

Members are ephemeral by construction: a shape has no persistent layer, volumes or published
ports, so no member ever holds anyone's files. The pool's memory is bounded: a member is
only started while the members' total (proportional) resident memory plus one more stays
under ``max_mib`` and the host keeps ``reserve_mib`` available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field

from engine.errors import ConfigError, ProtocolError
from engine.sandbox.capacity import meminfo_mib
from engine.sandbox.instant import StartInfo, identify
from engine.sandbox.metrics import process_pss_mib
from engine.sandbox.sandbox import Sandbox, Status
from engine.sandbox.spec import SandboxSpec

log = logging.getLogger(__name__)

MATCH_FIELDS = ("rootfs", "root_image", "cpus", "memory_mib", "network", "persist_dir", "volumes", "ports")
"""What a request must share with a shape; the rest (name, env, workdir, user, timeout) is
applied when a member is handed out."""
TAKE_IDENTITY_S = 5.0
REFILL_DELAY_S = 0.5
RETRY_MAX_S = 60.0

Warm = Callable[[Sandbox], Awaitable[Any]]
"""Warms a new member (e.g. starts its Python REPL); what it returns travels with the member."""


class Starter(Protocol):
    async def start(self, spec: SandboxSpec) -> Sandbox: ...


class PoolShape(BaseModel):
    """One kind of pool member."""

    label: str
    """For logs and status (e.g. the image name)."""
    spec: SandboxSpec
    """The members' spec; its name is replaced per member."""
    size: int = Field(ge=0, le=64)

    def matches(self, spec: SandboxSpec) -> bool:
        return all(getattr(spec, f) == getattr(self.spec, f) for f in MATCH_FIELDS)


class PoolStatus(BaseModel):
    label: str
    size: int
    ready: int
    starting: int
    taken: int
    replaced: int
    """Members that died idle and were replaced."""
    member_pss_mib: float | None
    """Largest proportional resident memory of a member (shared template pages split)."""
    limited_by_memory: bool


@dataclass
class Member:
    sandbox: Sandbox
    extra: Any = None


@dataclass
class _Slot:
    shape: PoolShape
    warm: Warm | None
    members: list[Member] = field(default_factory=list)
    starting: int = 0
    taken: int = 0
    replaced: int = 0
    cost_mib: float | None = None
    limited: bool = False
    failures: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    watchers: set[asyncio.Task[None]] = field(default_factory=set)


def host_available_mib() -> float:
    """``MemAvailable`` of the host in MiB (inf if unknown)."""
    avail = meminfo_mib("MemAvailable")
    return float("inf") if avail is None else avail


class WarmPool:
    """Warm members for a set of shapes, on one engine."""

    def __init__(
        self,
        starter: Starter,
        *,
        max_mib: float | None = None,
        reserve_mib: float = 1024,
        cost: Callable[[Sandbox], float | None] | None = None,
        available: Callable[[], float] = host_available_mib,
    ) -> None:
        """Args:
        starter: what starts members (an :class:`~engine.sandbox.engine.Engine`).
        max_mib: bound of the members' total memory (default a quarter of what the host has
            available now).
        reserve_mib: memory the host must keep available after one more member.
        cost: a member's memory in MiB (default its VMM's proportional set size).
        available: the host's available memory in MiB.
        """
        self._starter = starter
        self.max_mib = max_mib if max_mib is not None else available() / 4
        self.reserve_mib = reserve_mib
        self._cost = cost or (lambda sb: process_pss_mib(sb.vm.pid))
        self._available = available
        self._slots: list[_Slot] = []
        self._closed = False
        self._seq = 0

    def add(self, shape: PoolShape, warm: Warm | None = None) -> None:
        """Keep ``shape.size`` members of ``shape`` (call :meth:`start` to begin filling).

        Raises:
            ConfigError: the shape has a persistent layer, volumes or ports.
        """
        s = shape.spec
        if s.persist_dir is not None or s.volumes or s.ports:
            raise ConfigError(f"pool {shape.label!r}: pool members must be ephemeral, without volumes or ports",
                              hint="pool only sandboxes that start fresh")  # fmt: skip
        self._slots.append(_Slot(shape=shape, warm=warm))

    def start(self) -> None:
        """Start the refill tasks (needs a running event loop)."""
        for slot in self._slots:
            if slot.task is None:
                slot.task = asyncio.create_task(self._refill(slot), name=f"pool-{slot.shape.label}")
                slot.wake.set()

    def status(self) -> list[PoolStatus]:
        return [
            PoolStatus(label=s.shape.label, size=s.shape.size, ready=len(s.members), starting=s.starting,
                       taken=s.taken, replaced=s.replaced, member_pss_mib=s.cost_mib, limited_by_memory=s.limited)
            for s in self._slots
        ]  # fmt: skip

    def used_mib(self) -> float:
        """Memory of all idle members now (MiB)."""
        return sum(self._member_cost(m, s) for s in self._slots for m in s.members)

    async def take(self, spec: SandboxSpec) -> tuple[Sandbox, Any] | None:
        """A warm member for ``spec`` with ``spec``'s name and a fresh identity, or None when
        no shape matches or none is ready (the caller starts one then)."""
        t0 = time.perf_counter()
        for slot in self._slots:
            if not slot.shape.matches(spec):
                continue
            while slot.members:
                member = slot.members.pop(0)
                # refill a moment later: starting a VM now (a fork of this process, a busy
                # vCPU) would slow down the sandbox being handed out, on its first commands
                asyncio.get_running_loop().call_later(REFILL_DELAY_S, slot.wake.set)
                if not self._alive(member):
                    slot.replaced += 1
                    log.warning("pool %s: a member died while idle; replaced", slot.shape.label)
                    await member.sandbox.kill()
                    continue
                sb = member.sandbox
                try:
                    await asyncio.wait_for(identify(sb.client, spec.name), TAKE_IDENTITY_S)
                except asyncio.CancelledError:
                    await asyncio.shield(sb.kill())  # popped: nobody else would ever stop it
                    raise
                except Exception as exc:
                    refused = isinstance(exc, ProtocolError) and sb.client.dead is None
                    if sb.start_info.kind == "restore" or not refused or not self._alive(member):
                        # restored from a shared template: never handed out without its own
                        # identity; nor is any member that did not answer at all
                        log.warning("pool %s: a member failed its identity (%s); replaced", slot.shape.label, exc)
                        slot.replaced += 1
                        await sb.kill()
                        continue
                    # a booted member that refused shares nothing with others (gVisor's agent
                    # takes no identity): it keeps the hostname it booted with
                    log.debug("pool %s: member keeps its hostname: %s", slot.shape.label, exc)
                sb.spec = spec
                sb.start_info = StartInfo(kind="pool", ms=(time.perf_counter() - t0) * 1000,
                                          detail=f"warm pool {slot.shape.label}")  # fmt: skip
                sb.started_at = time.time()
                slot.taken += 1
                return sb, member.extra
        return None

    async def close(self) -> None:
        """Stop refilling and kill every idle member."""
        self._closed = True
        for slot in self._slots:
            for watcher in list(slot.watchers):
                watcher.cancel()
            if slot.task is not None:
                slot.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await slot.task
        members = [m for s in self._slots for m in s.members]
        for slot in self._slots:
            slot.members.clear()
        await asyncio.gather(*(m.sandbox.kill() for m in members), return_exceptions=True)

    # ------------------------------------------------------------------ refill

    @staticmethod
    def _alive(member: Member) -> bool:
        """Cheap checks; the identity that follows is the round trip that proves the guest
        answers (a member that does not is dropped)."""
        sb = member.sandbox
        return sb.status is Status.RUNNING and not sb.vm.exited() and sb.client.dead is None

    def _member_cost(self, member: Member, slot: _Slot) -> float:
        cost = self._cost(member.sandbox)
        if cost is not None:
            slot.cost_mib = max(slot.cost_mib or 0.0, cost)
            return cost
        return float(slot.shape.spec.memory_mib)

    def _room_for(self, slot: _Slot) -> bool:
        """Whether one more member of ``slot`` fits the memory bound."""
        one = slot.cost_mib if slot.cost_mib is not None else float(slot.shape.spec.memory_mib)
        starting = sum((s.cost_mib or s.shape.spec.memory_mib) * s.starting for s in self._slots)
        fits = self.used_mib() + starting + one <= self.max_mib and self._available() - one >= self.reserve_mib
        if not fits and not slot.limited:
            log.warning("pool %s: holding %d of %d members: the pool's memory bound (%.0f MiB) or the host's "
                        "reserve (%.0f MiB available) is reached", slot.shape.label, len(slot.members),
                        slot.shape.size, self.max_mib, self._available())  # fmt: skip
        slot.limited = not fits
        return fits

    async def _refill(self, slot: _Slot) -> None:
        while not self._closed:
            await slot.wake.wait()
            slot.wake.clear()
            try:
                await self._refill_once(slot)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours: log it, keep refilling
                log.exception("pool %s: refilling failed", slot.shape.label)
                await asyncio.sleep(1)
                slot.wake.set()

    async def _refill_once(self, slot: _Slot) -> None:
        dead = [m for m in slot.members if not self._alive(m)]
        for m in dead:  # all removed before any await: take() and _watch() change the list too
            slot.members.remove(m)
        for m in dead:
            slot.replaced += 1
            log.warning("pool %s: a member died while idle; replacing it", slot.shape.label)
            await m.sandbox.kill()
        while len(slot.members) + slot.starting < slot.shape.size and self._room_for(slot):
            slot.starting += 1
            try:
                member = await self._new_member(slot)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                slot.failures += 1
                delay = min(RETRY_MAX_S, 0.5 * 2**slot.failures)
                log.warning("pool %s: starting a member failed (%s); retrying in %.0f s", slot.shape.label,
                            str(exc).splitlines()[0], delay)  # fmt: skip
                await asyncio.sleep(delay)
                slot.wake.set()
                break
            finally:
                slot.starting -= 1
            slot.failures = 0
            if self._closed:
                await member.sandbox.kill()
                return
            slot.members.append(member)
            self._member_cost(member, slot)
            watcher = asyncio.create_task(self._watch(slot, member))
            slot.watchers.add(watcher)
            watcher.add_done_callback(slot.watchers.discard)
        if slot.limited and len(slot.members) < slot.shape.size:
            await asyncio.sleep(5)  # memory may free up
            slot.wake.set()

    async def _new_member(self, slot: _Slot) -> Member:
        self._seq += 1
        name = f"pool-{os.getpid() % 10000}-{self._seq}"
        sb = await self._starter.start(slot.shape.spec.model_copy(update={"name": name}))
        try:
            await sb.exec(["true"])  # the exec path is translated/paged in before anyone waits on it
            extra = await slot.warm(sb) if slot.warm is not None else None
        except BaseException:
            await sb.kill()
            raise
        return Member(sandbox=sb, extra=extra)

    async def _watch(self, slot: _Slot, member: Member) -> None:
        """Replace a member whose VM dies while it waits in the pool."""
        with contextlib.suppress(Exception):
            await member.sandbox.vm.wait_exited()
        if member in slot.members:
            slot.members.remove(member)
            slot.replaced += 1
            log.warning("pool %s: a member's VM exited while idle; replacing it", slot.shape.label)
            await member.sandbox.kill()
            slot.wake.set()
