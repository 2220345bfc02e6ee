"""What each sandbox runs on, in the TUI: the "VM" column's labels, the header's backend in
force (fake, local), its failure shown once as a notification, and ``msb-tui --backend``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.vm import select
from engine.vm.fake import FakeBackend
from msb_tui.app import MsbApp
from msb_tui.local import LocalWorkbench
from msb_tui.main import _parser, make_workbench
from msb_tui.widgets.sandbox_table import _cells
from msb_tui.workbench import SandboxRow, backend_summary, start_of
from tests.unit.helpers import eventually

MakeApp = Callable[..., MsbApp]


def row(status: str = "running", backend: str | None = "gvisor", accel: str | None = "none") -> SandboxRow:
    return SandboxRow(name="api", status=status, backend=backend, accel=accel)  # type: ignore[arg-type]


@pytest.mark.parametrize(("backend", "accel", "shown"), [
    ("gvisor", "none", "gVisor"), ("qemu", "tcg", "QEMU/TCG ⚠"), ("qemu", "kvm", "QEMU/KVM"),
    ("krun", "kvm", "libkrun/KVM"), (None, "tcg", "QEMU/TCG ⚠"), (None, None, "—"),
])  # fmt: skip
def test_the_vm_column_shows_the_label(backend: str | None, accel: str | None, shown: str) -> None:
    assert _cells(row(backend=backend, accel=accel), None)["accel"] == shown


def test_the_vm_column_is_empty_unless_running() -> None:
    assert _cells(row(status="stopped"), None)["accel"] == "—"
    assert _cells(row(), "stopping…")["accel"] == "—"


def test_backend_summary() -> None:
    gv, tcg = row(), row(backend="qemu", accel="tcg")
    assert backend_summary(None, []) is None
    assert backend_summary(None, [tcg, row(status="stopped")]) == "running on QEMU/TCG"
    assert backend_summary("gVisor", [gv]) == "gVisor"
    assert backend_summary("gVisor", [gv, tcg, tcg]) == "gVisor · also QEMU/TCG"


async def test_the_header_shows_the_fakes_backend(make_app: MakeApp) -> None:
    app = make_app(backend="gVisor")
    app.metrics_interval = None
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.sub_title == "fake engine · gVisor"


async def test_a_backend_that_does_not_work_is_one_notification(make_app: MakeApp) -> None:
    app = make_app(fail={"backend": "backend 'krun' was asked for but does not work here"})
    app.metrics_interval = None
    async with app.run_test():
        await eventually(lambda: any("choosing the backend failed" in str(n.title) for n in app._notifications))
        [note] = [n for n in app._notifications if "backend" in str(n.title)]
        assert "does not work here" in note.message and "the fake was told to fail backend" in note.message


def gvisor_like() -> FakeBackend:
    backend = FakeBackend()
    backend.name = "gvisor"  # type: ignore[misc]
    backend.fixed_accel = "none"  # type: ignore[attr-defined]
    return backend


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Sandboxfile with ``a`` (running on QEMU/TCG per its state.json) and ``b`` (stopped)."""
    (tmp_path / "Sandboxfile").write_text("sandboxes:\n  a:\n    image: busybox\n  b:\n    image: busybox\n")
    monkeypatch.setenv("MSB_AGENT", str(tmp_path / "agent"))
    monkeypatch.setattr(select, "FORCED", {"gvisor": lambda source: gvisor_like()})
    return tmp_path


def state(project: Path, name: str, **fields: Any) -> None:
    d = project / ".menv" / "sandboxes" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").write_text(json.dumps({"name": name, **fields}))


async def test_local_header_from_the_engine_and_the_running_sandboxes(project: Path) -> None:
    import fcntl
    import os

    state(project, "a", status="running", backend="qemu", accel="tcg")
    lock = os.open(project / ".menv" / "sandboxes" / "a" / "supervisor.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # "a" has a live supervisor
    state(project, "b", status="stopped", backend="gvisor", accel="none")
    try:
        wb = LocalWorkbench(project / "Sandboxfile", backend="gvisor")
        assert wb.description == f"embedded engine · {project / 'Sandboxfile'}"
        rows = {r.name: r for r in await wb.sandboxes()}
        assert rows["a"].backend_label == "QEMU/TCG" and rows["b"].backend is None  # only while running
        assert "running on QEMU/TCG" in wb.description
        assert await wb.backend() == "gVisor"
        assert wb.description == f"embedded engine · gVisor · also QEMU/TCG · {project / 'Sandboxfile'}"
    finally:
        os.close(lock)


def test_start_of_reads_what_it_understands() -> None:
    assert start_of({"started_by": "restore", "start_ms": 84}) == ("restore", 84.0)
    assert start_of({}) == (None, None)  # an engine from before instant sandboxes
    assert start_of({"started_by": "clone", "start_ms": "fast"}) == (None, None)
    assert start_of({"started_by": "pool", "start_ms": True}) == ("pool", None)
    assert start_of({"started_by": None, "start_ms": -1.0}) == (None, None)


async def test_local_rows_say_how_they_started(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From state.json, then from the supervisor's live ``status`` when it says (an older one does not)."""
    import fcntl
    import os

    from msb_tui import local

    answers: list[dict[str, Any]] = [{"uptime_s": 5.0}, {"uptime_s": 6.0, "started_by": "pool", "start_ms": 3.0}]

    async def status(socket: Path, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert msg == {"op": "status"}
        return answers.pop(0)

    monkeypatch.setattr(local, "request", status)
    state(project, "a", status="running", socket=str(project / "a.sock"), started_by="restore", start_ms=84.0)
    state(project, "b", status="stopped", started_by="boot", start_ms=1120.0)  # its last start: not shown
    lock = os.open(project / ".menv" / "sandboxes" / "a" / "supervisor.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # "a" has a live supervisor
    try:
        wb = LocalWorkbench(project / "Sandboxfile")
        rows = {r.name: r for r in await wb.sandboxes()}
        assert (rows["a"].started_by, rows["a"].start_ms, rows["a"].uptime_s) == ("restore", 84.0, 5.0)
        assert (rows["b"].started_by, rows["b"].start_ms) == (None, None)
        [a, _] = await wb.sandboxes()
        assert (a.started_by, a.start_ms, a.uptime_s) == ("pool", 3.0, 6.0)
    finally:
        os.close(lock)


def test_msb_tui_backend_flag(project: Path) -> None:
    args = _parser().parse_args(["-f", str(project), "--backend", "GVISOR"])
    wb = make_workbench(args)
    assert isinstance(wb, LocalWorkbench) and wb._backend == "gvisor"
    with pytest.raises(ConfigError, match="does not apply to --server") as info:
        make_workbench(_parser().parse_args(["--server", "http://x", "--backend", "qemu"]))
    assert info.value.hint and "msb server start --backend" in info.value.hint
    with pytest.raises(SystemExit):
        _parser().parse_args(["--backend", "docker"])
