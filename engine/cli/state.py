"""``msb log``, ``msb status`` and ``msb stop`` for project sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from engine.cli.common import EXIT_INTERRUPTED, EXIT_NOT_THERE, fail
from engine.cli.run import FILE_OPTION, _entry, _project
from engine.errors import MsbError


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the sandbox stops.")
@click.option("-n", "--lines", type=int, default=None, help="Only the last N lines.")
@click.option("--file", "file", type=click.Path(path_type=Path), help="The Sandboxfile (default: nearest).")
def log(name: str, follow: bool, lines: int | None, file: Path | None) -> None:
    """Print the output of sandbox NAME's main process (from .menv/, kept across runs)."""
    try:
        project = _project(file)
        _entry(project, name)
    except MsbError as exc:
        sys.exit(fail(exc))
    sdir = project.sandbox_dir(name)
    parts = [p for p in (sdir.output_log.with_name("output.log.1"), sdir.output_log) if p.is_file()]
    if not parts:
        click.echo(f"msb: sandbox {name!r} has no output yet (start it with `msb run {name}`)", err=True)
        sys.exit(EXIT_NOT_THERE)
    out = sys.stdout.buffer
    if lines is not None:
        data = b"".join(p.read_bytes() for p in parts)
        out.write(b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b"")
        offset = sdir.output_log.stat().st_size
    else:
        for p in parts[:-1]:
            out.write(p.read_bytes())
        offset = _copy_from(parts[-1], 0, out)
    out.flush()
    if not follow:
        return
    try:
        while True:
            alive = sdir.alive()
            try:
                size = sdir.output_log.stat().st_size
            except FileNotFoundError:
                size = 0
            if size < offset:  # rotated
                offset = 0
            offset = _copy_from(sdir.output_log, offset, out)
            out.flush()
            if not alive:
                return
            time.sleep(0.2)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _copy_from(path: Path, offset: int, out: Any) -> int:
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(1 << 16):
            out.write(block)
            offset += len(block)
    return offset


def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt_start(started_by: str | None, start_ms: float | None) -> str:
    """``restore 95ms``, ``boot 1.1s``, ``pool 3ms``; ``-`` when unknown (stopped)."""
    if not started_by:
        return "-"
    if start_ms is None:
        return started_by
    took = f"{start_ms:.0f}ms" if start_ms < 999.5 else f"{start_ms / 1000:.1f}s"
    return f"{started_by} {took}"


async def _rows(project: Any, names: list[str]) -> list[dict[str, Any]]:
    from engine.project.control import ControlError, request
    from engine.vm.select import backend_label

    rows = []
    for name in names:
        sdir = project.sandbox_dir(name)
        st = sdir.state()
        running = st.status == "running"
        label = backend_label(st.backend, st.accel) if st.backend else None
        row: dict[str, Any] = {
            "name": name, "status": st.status, "pid": st.supervisor_pid if running else None,
            "vm_pid": st.vm_pid if running else None, "backend": st.backend, "backend_label": label,
            "accel": st.accel, "command": st.command, "exit_code": st.exit_code, "message": st.message,
            "started_by": st.started_by if running else None, "start_ms": st.start_ms if running else None,
            "uptime_s": None, "cpu_percent": None, "memory_mib": None, "disk_bytes": None,
        }  # fmt: skip
        if running and st.socket:
            with contextlib.suppress(ControlError):
                live = await request(Path(st.socket), {"op": "status"}, timeout=10)
                for key in ("uptime_s", "cpu_percent", "memory_mib", "disk_bytes"):
                    row[key] = live.get(key)
                for key in ("started_by", "start_ms"):  # older supervisors do not say
                    row[key] = live.get(key, row[key])
        rows.append(row)
    return rows


@click.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@FILE_OPTION
def status(names: tuple[str, ...], as_json: bool, file: Path | None) -> None:
    """Show whether the project's sandboxes run, on which backend (for stopped ones: the one
    they last ran on), how running ones started (restore, boot or pool, and how long it
    took), with CPU, memory and disk of running ones."""
    try:
        project = _project(file)
        for n in names:
            _entry(project, n)
    except MsbError as exc:
        sys.exit(fail(exc))
    rows = asyncio.run(_rows(project, list(names) or project.sandboxfile.names()))
    if as_json:
        click.echo(json.dumps({"sandboxfile": str(project.path), "sandboxes": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no sandboxes in {project.path} (add one with `msb add NAME --image IMAGE`)")
        return
    click.echo(f"{'NAME':<16} {'STATUS':<9} {'PID':>7} {'BACKEND':<11} {'START':<13} {'UPTIME':>7} {'CPU%':>6} "
               f"{'MEM MiB':>8} {'DISK':>9}  NOTE")  # fmt: skip
    for r in rows:
        disk = "-" if r["disk_bytes"] is None else f"{r['disk_bytes'] / (1 << 20):.1f}M"
        cpu = "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}"
        mem = "-" if r["memory_mib"] is None else f"{r['memory_mib']:.0f}"
        note = " ".join(r["command"] or []) if r["status"] == "running" else (r["message"] or "")
        start = _fmt_start(r["started_by"], r["start_ms"])
        click.echo(f"{r['name']:<16} {r['status']:<9} {r['pid'] or '-':>7} {r['backend_label'] or '-':<11} "
                   f"{start:<13} {_fmt_uptime(r['uptime_s']):>7} {cpu:>6} {mem:>8} {disk:>9}  {note[:60]}")  # fmt: skip


@click.command()
@click.argument("names", nargs=-1, required=True)
@FILE_OPTION
def stop(names: tuple[str, ...], file: Path | None) -> None:
    """Stop running sandboxes (processes are signalled and the disk synced first)."""
    from engine.project import runtime

    try:
        project = _project(file)
        for n in names:
            _entry(project, n)
    except MsbError as exc:
        sys.exit(fail(exc))
    code = 0
    for n in names:
        if asyncio.run(runtime.stop(project.sandbox_dir(n))):
            click.echo(f"Sandbox {n} stopped")
        else:
            click.echo(f"msb: sandbox {n!r} is not running", err=True)
            code = EXIT_NOT_THERE
    sys.exit(code)
