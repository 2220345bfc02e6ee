"""``msb image prune``: caches evicted to their bounds (or all with ``--all``), freed bytes
reported, entries in use kept; ``msb doctor``'s cache lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cachebound import template_cache
from engine.cli.doctor_report import cache_checks
from engine.cli.images import image


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MSB_CACHE_DIR", str(tmp_path))
    for key in ("busy", "idle"):
        (tmp_path / "templates" / key).mkdir(parents=True)
        (tmp_path / "templates" / key / "ram").write_bytes(b"x" * (1 << 20))
    return tmp_path


def test_prune_all_removes_what_no_sandbox_uses_and_says_how_much(cache: Path) -> None:
    lease = template_cache(cache).lease(cache / "templates" / "busy")
    try:
        out = CliRunner().invoke(image, ["prune", "--all"])
    finally:
        assert lease is not None
        lease.release()
    assert out.exit_code == 0, out.output
    assert re.search(r"templates: deleted 1 \(1\.\d MB\); 1 in use kept", out.output), out.output
    assert (cache / "templates" / "busy").exists() and not (cache / "templates" / "idle").exists()


def test_prune_keeps_what_fits_the_bound(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_TEMPLATE_CACHE_MIB", "2")  # both take a little more than 1 MiB
    out = CliRunner().invoke(image, ["prune"])
    assert out.exit_code == 0, out.output
    assert re.search(r"templates: deleted 1 \(1\.\d MB\)\n", out.output), out.output
    assert len(list((cache / "templates").glob("*/ram"))) == 1


def test_doctor_shows_each_cache_against_its_bound(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_TEMPLATE_CACHE_MIB", "1")
    checks = {c.name: c for c in cache_checks(cache)}
    tpl = checks["cache: templates"]
    assert tpl.level == "warn" and tpl.detail.startswith("2 MiB of 1 MiB, 2 entries (0 in use)")
    assert "msb image prune" in (tpl.hint or "")
    assert checks["cache: root filesystems"].level == "ok"
