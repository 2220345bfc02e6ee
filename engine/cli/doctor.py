"""``msb doctor``: what this host can run and what isolates the code.

Every backend is probed for real (gVisor afresh; QEMU's KVM-or-TCG verdict comes from a probe
boot cached per host, QEMU and kernel), then the host tools, the guest kernel and agent, the
default choice and its isolation in plain words, and the one next step when something is
missing (``make setup``, or the ``apt-get install`` of a missing package). The findings are gathered by
:mod:`engine.cli.doctor_report`; ``--json`` prints that report as it is. Exit code 1 only
when no backend works here.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap

import click

from engine.cli.doctor_report import Report, gather

MARKS = {"ok": "✓", "warn": "!", "fail": "✗"}
WIDTH = 100


def _wrapped(label: str, text: str, indent: int = 14) -> str:
    """``label`` then ``text`` wrapped under itself."""
    pad = " " * indent
    lines = textwrap.wrap(text, WIDTH - indent) or [""]
    return f"{label:<{indent}}{lines[0]}" + "".join(f"\n{pad}{line}" for line in lines[1:])


def render(report: Report) -> str:
    """The report as people read it."""
    out = ["backends (strongest first; auto takes the first that works, QEMU/TCG last):"]
    for b in report.backends:
        facts = [f for f in (b.version and f"version {b.version}", b.probe_ms and f"probe {b.probe_ms:.0f} ms") if f]
        state = "usable" if b.usable else "NOT usable"
        level = "fail" if not b.usable else "warn" if b.accel == "tcg" else "ok"  # TCG works, but is no boundary
        out.append(_wrapped(f"{MARKS[level]} {b.label}",
                            f"{state}: {b.reason}" + (f" [{', '.join(facts)}]" if facts else "")))  # fmt: skip
        if b.hint:
            out.append(_wrapped("", f"→ {b.hint}"))
    out.append("\nhost:")
    for c in report.checks:
        out.append(_wrapped(f"{MARKS[c.level]} {c.name}", c.detail, indent=18))
        if c.hint:
            out.append(_wrapped("", f"→ {c.hint}", indent=18))
    d = report.default
    chosen = f"{d.label} ({d.name})" if d.name else "none"
    out += [
        "",
        _wrapped("default:", f"{chosen} — {d.why}"),
        _wrapped("kernel:", report.kernel_in_use),
        _wrapped("agent:", report.agent or "missing"),
        _wrapped("isolation:", report.isolation),
        _wrapped("TCG:", report.tcg),
    ]
    if report.recommendation:
        out.append(_wrapped("recommend:", report.recommendation))
    out.append(_wrapped("next step:", report.next_step or "none: nothing msb needs is missing"))
    return "\n".join(out)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The same report, machine-readable.")
def doctor(as_json: bool) -> None:
    """Check this host: probe every backend (libkrun, QEMU with KVM or TCG, gVisor) and say
    why each works or not; the tools, guest kernel and agent; the default backend and what
    isolates sandboxed code with it. Exit code 1 only if no backend works."""
    report = asyncio.run(gather())
    click.echo(report.model_dump_json(indent=2) if as_json else render(report))
    sys.exit(0 if report.usable else 1)


__all__ = ["doctor", "render"]
