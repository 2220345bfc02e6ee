"""``msb doctor``'s one next step for a new user, over the doctor tests' fakes: ``make setup``
when something it builds is missing (agent, kernel, runsc), ``apt-get install`` when only a
system package is, the backends' hint when nothing works, and nothing when all is there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import doctor_report
from engine.cli.doctor_report import BackendEntry, Check
from tests.unit.cli.test_doctor import HOST_LIKE_THIS, install, run

CHECKOUT = Path("/src/msb")
OK = Check(name="qemu", level="ok", detail="QEMU 7.2")


def host(monkeypatch: pytest.MonkeyPatch, *checks: Check, checkout: Path | None = CHECKOUT) -> None:
    """The faked host of test_doctor with these tool checks, a present agent and network filter."""
    install(monkeypatch, HOST_LIKE_THIS, [])
    monkeypatch.setattr(doctor_report, "tool_checks", lambda cache_dir: [OK, *checks])
    monkeypatch.setattr(doctor_report, "agent_check", lambda: Check(name="agent", level="ok", detail="msb-agent"))
    monkeypatch.setattr(doctor_report, "netfilter_check", lambda: Check(name="network filter", level="ok", detail="x"))
    monkeypatch.setattr(doctor_report, "checkout_root", lambda: checkout)


def next_step() -> str | None:
    step = json.loads(run("--json")[1])["next_step"]
    assert step is None or isinstance(step, str)
    return step


def test_nothing_missing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch)
    assert next_step() is None
    code, out = run()
    assert code == 0 and out.rstrip().endswith("next step:    none: nothing msb needs is missing")


def test_a_missing_agent_says_make_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch)
    monkeypatch.setattr(doctor_report, "agent_check", lambda: Check(name="agent", level="fail", detail="missing: x",
                                                                     hint="make agent", setup=True))  # fmt: skip
    assert next_step() == "run `make setup` in /src/msb: it builds or fetches what is missing (agent)"
    assert "\nnext step:    run `make setup` in /src/msb" in run()[1]


def test_a_missing_agent_or_network_filter_is_for_make_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real checks (not faked) mark what ``make setup`` builds."""
    monkeypatch.setenv("MSB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MSB_AGENT", raising=False)
    monkeypatch.delenv("MSB_NETFILTER", raising=False)
    assert doctor_report.agent_check().setup and doctor_report.netfilter_check().setup


def test_kernel_without_9p_and_missing_runsc_say_make_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, Check(name="runsc", level="warn", detail="gVisor unavailable", setup=True))
    monkeypatch.setattr(doctor_report, "kernel_checks", lambda cache_dir: ([
        Check(name="kernel (QEMU)", level="ok", detail="debian 6.1"),
        Check(name="volumes (9p)", level="warn", detail="no 9p", setup=True)], "debian 6.1"))  # fmt: skip
    assert next_step() == "run `make setup` in /src/msb: it builds or fetches what is missing (runsc, volumes (9p))"


def test_only_a_missing_package_says_apt_get_install(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, Check(name="depmod", level="warn", detail="missing", package="kmod"))
    assert next_step() == "as root: apt-get install kmod (or `make setup` in /src/msb)"
    host(monkeypatch, Check(name="depmod", level="warn", detail="missing", package="kmod"),
         Check(name="slirp4netns", level="warn", detail="missing", package="slirp4netns"), checkout=None)  # fmt: skip
    assert next_step() == "as root: apt-get install kmod slirp4netns"


def test_setup_and_packages_together_say_make_setup_once(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, Check(name="depmod", level="warn", detail="missing", package="kmod"),
         Check(name="runsc", level="warn", detail="gVisor unavailable", setup=True))  # fmt: skip
    assert next_step() == ("run `make setup` in /src/msb: it builds or fetches what is missing (runsc) "
                           "and installs kmod")  # fmt: skip


def test_without_a_checkout_the_checks_own_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, Check(name="runsc", level="warn", detail="gVisor unavailable", hint="install runsc",
                            setup=True), checkout=None)  # fmt: skip
    assert next_step() == "install runsc"


def test_no_backend_and_nothing_to_fix_gives_qemus_hint() -> None:
    backends = [BackendEntry(name=n, label=n, usable=False, reason="no", isolation="-", hint=f"fix {n}")
                for n in ("krun", "qemu", "gvisor")]  # fmt: skip
    assert doctor_report.next_step([OK], backends, CHECKOUT) == "fix qemu"


def test_real_tool_checks_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With nothing on PATH, each missing tool names the Debian package that brings it."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(doctor_report, "_which_sbin", lambda tool: None)
    monkeypatch.setattr(doctor_report, "_runsc", lambda cache_dir: Check(name="runsc", level="ok", detail="x"))
    checks = {c.name: c for c in doctor_report.tool_checks(tmp_path)}
    assert checks["depmod"].package == "kmod" and checks["qemu"].package == "qemu-system-x86"
    assert checks["mkfs.ext4"].package == "e2fsprogs" and checks["mmdebstrap"].package == "mmdebstrap"
    assert doctor_report.checkout_root() is not None  # the tests run from a checkout
