"""A server started on a state directory of the old layout (issue 15): namespaces' sandboxes
in ``<state>/namespaces/<ns>/`` (``Sandboxfile`` and ``.menv/sandboxes/<name>/upper``, the
gVisor directory layer) move to server-owned state once, files kept; a layer that a guest
turned into a symlink to a host directory is refused with the reason, never followed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security import server_proc
from tests.security.server_proc import ServerProc, loose_dirs, sandbox_start, sh, uniq
from tests.security.server_proc import sandbox_stop as stop

pytestmark = pytest.mark.vm

NS = "old"


def _old_layout(state: Path, target: Path) -> None:
    """``keeper`` with ``/root/keep.txt`` in its layer; ``evil`` whose layer is a symlink to
    ``target`` (what a guest with the namespace directory mounted could plant)."""
    ns = state / "namespaces" / NS
    keep = ns / ".menv" / "sandboxes" / "keeper" / "upper" / "root"
    keep.mkdir(parents=True)
    keep.chmod(0o700)
    (keep / "keep.txt").write_text("kept across the migration\n")
    evil = ns / ".menv" / "sandboxes" / "evil"
    evil.mkdir(parents=True)
    (evil / "upper").symlink_to(target)
    (ns / "Sandboxfile").write_text("sandboxes:\n  keeper:\n    image: busybox\n  evil:\n    image: busybox\n")


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Iterator[tuple[ServerProc, Path]]:
    """A server started on an old-layout state directory, and the host directory ``evil``'s
    layer pointed at."""
    base = tmp_path_factory.mktemp("migrate")
    target = base / "host-dir"
    target.mkdir()
    _old_layout(base / "state", target)
    for srv in server_proc.served(base / "state", base / "server.log"):
        yield srv, target


def test_old_sandbox_keeps_its_files(migrated: tuple[ServerProc, Path]) -> None:
    """Not an attack: ``keeper`` starts by name (its definition migrated) and has its file."""
    srv, _ = migrated
    key = srv.keygen(NS)
    doc = srv.rpc("sandbox.start", {"namespace": NS, "sandbox": "keeper"}, key)
    assert "result" in doc, f"{doc}\n{srv.log_tail()}"
    try:
        assert sh(srv, key, NS, "keeper", "cat /root/keep.txt")["stdout"] == "kept across the migration\n"
    finally:
        stop(srv, key, NS, "keeper")


def test_symlinked_layer_is_refused_not_followed(migrated: tuple[ServerProc, Path]) -> None:
    """Attack: the old layout's ``.menv/sandboxes/evil/upper`` is a symlink to a host directory
    (planted by a guest before the upgrade). The migration refuses it, logs why, and starting
    ``evil`` afterwards writes nothing into the host directory."""
    srv, target = migrated
    key = srv.keygen(NS)
    doc = srv.rpc("sandbox.start", {"namespace": NS, "sandbox": "evil"}, key)
    if "result" not in doc:  # not migrated: define it afresh, as a client would
        doc = srv.rpc("sandbox.start", {"namespace": NS, "sandbox": "evil", "config": {"image": "busybox"}}, key)
    if "result" in doc:
        sh(srv, key, NS, "evil", "echo pwned > /pwned; sync")
        stop(srv, key, NS, "evil")
    assert sorted(os.listdir(target)) == [], "the host directory was written through the planted layer link"
    said = [r for r in srv.log_records() if r.get("level") in ("warning", "error") and "evil" in str(r)]
    assert said, f"the refused layer was not logged:\n{srv.log_tail()}"


def test_migrated_state_is_out_of_reach(migrated: tuple[ServerProc, Path]) -> None:
    """Attack: after the upgrade, mount the migrated namespace's data area (``.:/ns``) and look
    for what the old namespace directory held (``Sandboxfile``, ``.menv``, ``keeper``'s layer):
    a migration that renamed the old directory into the data area would hand it all to the
    guest. And every server directory left or made by the migration is 0700."""
    srv, _ = migrated
    key, name = srv.keygen(NS), uniq("look")
    doc = sandbox_start(srv, key, NS, name, image="busybox", ephemeral=True, volumes=[".:/ns"])
    assert "result" in doc, f"{doc}\n{srv.log_tail()}"
    try:
        seen = sh(srv, key, NS, name, "ls -la /ns; find /ns | head -100")["stdout"]
    finally:
        stop(srv, key, NS, name)
    for secret in ("Sandboxfile", ".menv", "keep.txt", "upper", "evil"):
        assert secret not in seen, f"the migrated data area shows {secret!r}:\n{seen}"
    loose = loose_dirs(srv.state)
    assert loose == [], "server directories open to other users after the migration:\n" + "\n".join(loose)
