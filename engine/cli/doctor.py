"""``msb doctor``: what this host can run and what isolates the code.

Each check is a real probe (the accelerator verdict comes from a probe boot, cached per
host/QEMU/kernel), reported as ok / warn / fail with what to do. This first version covers
the QEMU backend; gVisor and libkrun verdicts join it with issue 7's backends.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from typing import Literal

import click
from pydantic import BaseModel

from engine.errors import MsbError

Level = Literal["ok", "warn", "fail"]


class Check(BaseModel):
    name: str
    level: Level
    detail: str
    hint: str | None = None


class Report(BaseModel):
    checks: list[Check]
    backend: str
    accelerator: str | None
    isolation: str
    """The isolation in force, in plain words."""


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def _tools() -> list[Check]:
    checks = []
    qemu = shutil.which("qemu-system-x86_64")
    checks.append(Check(name="qemu", level="ok" if qemu else "fail",
                        detail=_version([qemu, "--version"]) or "" if qemu else "qemu-system-x86_64 not found",
                        hint=None if qemu else "apt-get install qemu-system-x86 (or make setup)"))  # fmt: skip
    for tool, what, pkg in (("mmdebstrap", "builds the offline base images", "mmdebstrap"),
                            ("mkfs.ext4", "makes root and writable-layer images", "e2fsprogs")):  # fmt: skip
        found = shutil.which(tool)
        checks.append(Check(name=tool, level="ok" if found else "warn",
                            detail=f"{found} ({what})" if found else f"missing: {what}",
                            hint=None if found else f"apt-get install {pkg}"))  # fmt: skip
    return checks


def _netfilter() -> Check:
    from engine import paths

    shim = paths.netfilter_path()
    if shim.is_file():
        return Check(name="network filter", level="ok",
                     detail=f"{shim} (enforces the 'public' scope: no host loopback/private ranges)")  # fmt: skip
    return Check(name="network filter", level="fail", detail=f"missing: {shim}",
                 hint="make netfilter (or make setup); without it 'public' sandboxes refuse to start")  # fmt: skip


async def _engine() -> tuple[list[Check], str | None, str]:
    from engine.sandbox.engine import Engine

    try:
        assets = await Engine().prepare()
    except MsbError as exc:
        return [Check(name="engine", level="fail", detail=exc.message, hint=exc.hint)], None, "none (cannot boot)"
    k, a = assets.kernel, assets.accel
    probe = f", probe boot {a.probe_ms:.0f} ms" if a.probe_ms else ""
    checks = [
        Check(name="kernel", level="ok", detail=f"{k.kind} {k.version} ({k.source or k.path})"),
        Check(name="volumes (9p)", level="ok" if k.supports_9p else "warn",
              detail="supported by the kernel" if k.supports_9p else "this kernel has no 9p: volumes are refused",
              hint=None if k.supports_9p else "make kernel (the minimal kernel has 9p built in)"),
        Check(name="accelerator", level="ok" if a.accel == "kvm" else "warn",
              detail=f"{a.accel.upper()} ({a.reason}; {a.source}{probe})",
              hint=None if a.accel == "kvm" else a.warning),
    ]  # fmt: skip
    if a.accel == "kvm":
        isolation = ("hardware virtualisation (KVM): the guest runs its own kernel in a VM; the host is "
                     "protected by KVM and QEMU (seccomp-confined)")  # fmt: skip
    else:
        isolation = ("software emulation (QEMU TCG): the guest runs its own kernel, but QEMU does not treat "
                     "TCG as a security boundary — a compatibility mode, not containment for hostile code")  # fmt: skip
    return checks, a.accel, isolation


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Check this host: QEMU, kernel, accelerator (by a real probe boot), volumes, network
    filter and tools, and say what isolates sandboxed code here. Exit code 1 if a check
    failed."""
    engine_checks, accel, isolation = asyncio.run(_engine())
    report = Report(checks=[*_tools(), *engine_checks, _netfilter()], backend="qemu", accelerator=accel,
                    isolation=isolation)  # fmt: skip
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        marks = {"ok": "✓", "warn": "!", "fail": "✗"}
        for c in report.checks:
            click.echo(f"{marks[c.level]} {c.name:<16} {c.detail}")
            if c.hint:
                click.echo(f"  {'':<16} → {c.hint}")
        click.echo(f"\nbackend: {report.backend}\nisolation: {report.isolation}")
    sys.exit(1 if any(c.level == "fail" for c in report.checks) else 0)


__all__ = ["doctor"]
