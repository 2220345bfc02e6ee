"""What krun_plan makes of a VmSpec's network scope, ports and layers (pure: no library)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.spec import NetScope, PortMap, VolumeMount
from engine.vm.backend import VmSpec
from engine.vm.krun import KrunCall, check_spec, krun_plan
from engine.vm.krun_ffi import KRUN_TSI_HIJACK_INET

SOCK = Path("/run/msb/agent.sock")


def vm(tmp_path: Path, network: NetScope = "none", **kw: object) -> VmSpec:
    return VmSpec(name="demo", kernel=Path(os.devnull), initrd=Path(os.devnull), root_image=tmp_path,
                  run_dir=tmp_path, network=network, **kw)  # type: ignore[arg-type]  # fmt: skip


def plan(spec: VmSpec, **kw: object) -> dict[str, KrunCall]:
    return {c.name: c for c in krun_plan(spec, root_dir=Path("/r"), agent_socket=SOCK, agent_port=9, **kw)}  # type: ignore[arg-type]


@pytest.mark.parametrize(("scope", "features"), [("none", 0), ("any", KRUN_TSI_HIJACK_INET)])
def test_scopes_libkrun_can_enforce_choose_the_vsock_features(tmp_path: Path, scope: NetScope, features: int) -> None:
    calls = krun_plan(vm(tmp_path, scope), root_dir=Path("/r"), agent_socket=SOCK, agent_port=9)
    names = [c.name for c in calls]
    # The implicit device (TSI by heuristics) goes first, then the explicit one, then the port.
    assert names.index("krun_disable_implicit_vsock") < names.index("krun_add_vsock") < names.index(
        "krun_add_vsock_port"
    )
    assert plan(vm(tmp_path, scope))["krun_add_vsock"].args == (features,)


@pytest.mark.parametrize("scope", ["public", "group"])
def test_scopes_libkrun_cannot_enforce_are_refused(tmp_path: Path, scope: NetScope) -> None:
    with pytest.raises(ConfigError) as err:
        plan(vm(tmp_path, scope))
    assert f"network scope {scope!r} cannot be enforced by the libkrun backend" in str(err.value)
    assert err.value.hint is not None
    assert "--backend qemu" in err.value.hint and "--backend gvisor" in err.value.hint


def test_ports_need_a_wildcard_host_address(tmp_path: Path) -> None:
    loopback = vm(tmp_path, "any", ports=(PortMap(host_port=8080, guest_port=80),))
    with pytest.raises(ConfigError, match=r"cannot keep the port on 127\.0\.0\.1"):
        plan(loopback)
    for ip in ("0.0.0.0", "::"):
        wild = vm(tmp_path, "any", ports=(PortMap(host_port=8080, guest_port=80, host_ip=ip),))
        assert plan(wild)["krun_set_port_map"].args == (("8080:80",),)
    with pytest.raises(ConfigError, match="network scope is 'none'"):
        plan(vm(tmp_path, "none", ports=(PortMap(host_port=8080, guest_port=80, host_ip="0.0.0.0"),)))


def test_a_persistent_layer_asks_the_agent_to_sync(tmp_path: Path) -> None:
    env = plan(vm(tmp_path, upper_image=tmp_path / "upper"))["krun_set_exec"].args[2]
    assert isinstance(env, tuple) and "MSB_SYNC=1" in env
    env = plan(vm(tmp_path))["krun_set_exec"].args[2]
    assert isinstance(env, tuple) and not any(e.startswith("MSB_SYNC") for e in env)


def test_volumes_are_shared_from_the_given_directories(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    spec = vm(tmp_path, volumes=(VolumeMount(host=share, guest="/data", readonly=True),))
    calls = krun_plan(spec, root_dir=Path("/r"), agent_socket=SOCK, agent_port=9, volume_dirs=[Path("/run/vol/0")])
    assert [c.args for c in calls if c.name == "krun_add_virtiofs"] == [("msbvol0", "/run/vol/0")]
    with pytest.raises(ConfigError, match="1 volumes"):
        krun_plan(spec, root_dir=Path("/r"), agent_socket=SOCK, agent_port=9, volume_dirs=[])


def test_read_write_volumes_are_refused(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    with pytest.raises(ConfigError, match="device nodes and setuid files for real") as err:
        plan(vm(tmp_path, volumes=(VolumeMount(host=share, guest="/data"),)))
    assert err.value.hint is not None and "read-only" in err.value.hint and "--backend qemu" in err.value.hint


def test_the_agent_runs_in_krun_mode_from_the_root(tmp_path: Path) -> None:
    assert plan(vm(tmp_path))["krun_set_exec"].args[:2] == ("/.msb/agent", ("--krun",))


def test_check_spec_refuses_what_the_plan_refuses(tmp_path: Path) -> None:
    check_spec(vm(tmp_path, "any", ports=(PortMap(host_port=80, guest_port=80, host_ip="0.0.0.0"),)))
    with pytest.raises(ConfigError, match="cannot be enforced"):
        check_spec(vm(tmp_path, "public"))
    with pytest.raises(ConfigError, match="cannot keep the port"):
        check_spec(vm(tmp_path, "any", ports=(PortMap(host_port=80, guest_port=80),)))
