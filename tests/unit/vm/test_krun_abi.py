"""The libkrun binding at the ABI level, against a C stand-in library (krun_standin.c).

libkrun cannot run on this host (PVM: ``KVM_EXIT_INTERNAL_ERROR``) and no registry here ships
it, so these tests compile a ``libkrun.so`` with the same symbols that records every call and
its arguments, and check what crosses the C boundary: the exact calls, their order and values.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError, VmError
from engine.sandbox.spec import PortMap, VolumeMount
from engine.vm import krun_ffi
from engine.vm.backend import VmSpec
from engine.vm.krun import KrunCall, apply_plan, krun_plan, spawn
from engine.vm.krun_child import EXIT_CONFIG
from engine.vm.krun_ffi import KrunLib
from tests.unit.vm import krun_standin
from tests.unit.vm.krun_standin import CTX, recorded

CHILD_TIMEOUT_S = 60.0
AGENT_SOCKET = Path("/run/msb/vm/agent.sock")


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return krun_standin.build(tmp_path_factory.mktemp("krun"))


@pytest.fixture
def calls_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standin: Path) -> Path:
    log = tmp_path / "calls.jsonl"
    krun_standin.use(monkeypatch, standin, log)
    return log


def spec(tmp_path: Path) -> VmSpec:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    return VmSpec(name="demo", kernel=Path("/k/bzImage"), initrd=Path("/k/initrd"), root_image=Path("/img/root.ext4"),
                  run_dir=tmp_path, cpus=2, memory_mib=512, network="any",
                  volumes=(VolumeMount(host=share, guest="/data", readonly=True),),
                  ports=(PortMap(host_port=8080, guest_port=80, host_ip="0.0.0.0"),))  # fmt: skip


def plan(tmp_path: Path) -> list[KrunCall]:
    return krun_plan(spec(tmp_path), root_dir=Path("/img/rootfs"), agent_socket=AGENT_SOCKET, agent_port=1024,
                     agent_args=["--quiet"], env={"LANG": "C.UTF-8"}, workdir="/work")  # fmt: skip


def expected(tmp_path: Path) -> list[tuple[str, list[Any]]]:
    nofile = resource.RLIMIT_NOFILE
    env = ["MSB_PORT=vsock:1024", "MSB_HOSTNAME=demo", "MSB_VOL0=msbvol0:ro:/data", "LANG=C.UTF-8"]
    return [
        ("krun_create_ctx", []),
        ("krun_set_vm_config", [CTX, 2, 512]),
        ("krun_set_root", [CTX, "/img/rootfs"]),
        ("krun_add_virtiofs", [CTX, "msbvol0", str(tmp_path / "share")]),
        ("krun_disable_implicit_vsock", [CTX]),
        ("krun_add_vsock", [CTX, 1]),  # KRUN_TSI_HIJACK_INET: scope "any"
        ("krun_add_vsock_port", [CTX, 1024, str(AGENT_SOCKET)]),
        ("krun_set_port_map", [CTX, ["8080:80"]]),
        ("krun_set_rlimits", [CTX, [f"{nofile}=65536:65536"]]),
        ("krun_set_workdir", [CTX, "/work"]),
        ("krun_set_exec", [CTX, "/.msb/agent", ["--quiet"], env]),
    ]


def test_exact_call_sequence_and_arguments(tmp_path: Path, calls_log: Path) -> None:
    ctx = KrunLib().create_ctx()
    apply_plan(ctx, plan(tmp_path))
    ctx.free()
    ctx.free()  # idempotent
    assert recorded(calls_log) == [*expected(tmp_path), ("krun_free_ctx", [CTX])]


def test_empty_port_map_is_an_empty_array_not_null(tmp_path: Path, calls_log: Path) -> None:
    # NULL would tell libkrun to publish every listening guest port.
    p = krun_plan(spec(tmp_path).model_copy(update={"ports": ()}), root_dir=Path("/r"), agent_socket=AGENT_SOCKET,
                  agent_port=5, rlimits={}, agent_args=())  # fmt: skip
    apply_plan(KrunLib().create_ctx(), p)
    got = dict(recorded(calls_log))
    assert got["krun_set_port_map"] == [CTX, []]
    assert got["krun_set_rlimits"] == [CTX, []]
    assert got["krun_set_exec"][2] == []  # no agent args: {NULL}, not NULL


CALLS = [name for name, _ in expected(Path("/x"))]


@pytest.mark.parametrize("failing", CALLS)
def test_error_return_becomes_vm_error_naming_the_call(
    failing: str, tmp_path: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRUN_STANDIN_FAIL", failing)
    with pytest.raises(VmError) as err:
        apply_plan(KrunLib().create_ctx(), plan(tmp_path))
    assert f"libkrun {failing} failed: Invalid argument (EINVAL)" in str(err.value)
    assert recorded(calls_log)[-1][0] == failing  # nothing is called after the failure


def test_missing_library_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_LIBKRUN", str(tmp_path / "nope.so"))
    with pytest.raises(VmError) as err:
        KrunLib()
    assert "nope.so does not exist" in str(err.value)
    assert err.value.hint is not None and "MSB_LIBKRUN" in err.value.hint


def test_no_library_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MSB_LIBKRUN", raising=False)
    monkeypatch.setattr(krun_ffi.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(krun_ffi, "COMMON_PATHS", (str(tmp_path / "libkrun.so.1"),))
    with pytest.raises(VmError) as err:
        KrunLib()
    assert "libkrun not found" in str(err.value)
    assert err.value.hint is not None and "install libkrun" in err.value.hint


def test_unloadable_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "libkrun.so"
    junk.write_text("not an ELF file")
    monkeypatch.setenv("MSB_LIBKRUN", str(junk))
    with pytest.raises(VmError, match="cannot load libkrun"):
        KrunLib()


def test_start_enter_runs_in_a_child(tmp_path: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRUN_STANDIN_EXIT", "42")
    child = spawn(plan(tmp_path), tmp_path / "plan.json", log_level=3)
    assert child.wait(timeout=CHILD_TIMEOUT_S) == 42  # the "guest's" status, seen by the parent
    assert child.pid != os.getpid()
    assert recorded(calls_log) == [("krun_set_log_level", [3]), *expected(tmp_path), ("krun_start_enter", [CTX])]


@pytest.mark.parametrize("failing", ["krun_set_root", "krun_start_enter"])
def test_child_reports_a_failed_call(
    failing: str, tmp_path: Path, calls_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRUN_STANDIN_FAIL", failing)
    child = spawn(plan(tmp_path), tmp_path / "plan.json", stderr=subprocess.PIPE)
    _, err = child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == EXIT_CONFIG
    assert f"libkrun {failing} failed: Invalid argument" in err.decode()


def test_plan_refuses_what_libkrun_cannot_do(tmp_path: Path) -> None:
    udp_port = PortMap(host_port=53, guest_port=53, protocol="udp", host_ip="0.0.0.0")
    udp = spec(tmp_path).model_copy(update={"ports": (udp_port,)})
    with pytest.raises(ConfigError, match="TCP ports only"):
        krun_plan(udp, root_dir=Path("/r"), agent_socket=AGENT_SOCKET, agent_port=5)
    offline = spec(tmp_path).model_copy(update={"network": "none"})
    with pytest.raises(ConfigError, match="network scope is 'none'"):
        krun_plan(offline, root_dir=Path("/r"), agent_socket=AGENT_SOCKET, agent_port=5)
    with pytest.raises(ConfigError, match="reserved"):
        krun_plan(spec(tmp_path), root_dir=Path("/r"), agent_socket=AGENT_SOCKET, agent_port=5, env={"MSB_X": "1"})


def test_vcpu_count_fits_the_uint8_argument(calls_log: Path) -> None:
    ctx = KrunLib().create_ctx()
    with pytest.raises(VmError, match="1 to 255 vCPUs"):
        ctx.set_vm_config(256, 512)
    assert ("krun_set_vm_config", [CTX, 256 % 256, 512]) not in recorded(calls_log)
