"""The gVisor backend's pure parts: the OCI config and the runsc command line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.bootparts import check_layer_format
from engine.sandbox.spec import VolumeMount
from engine.vm import gvisor
from engine.vm.backend import VmSpec
from engine.vm.gvisor import (
    AGENT_IN_GUEST,
    RW_VOLUMES_ENV,
    check_spec,
    container_id,
    oci_config,
    runsc_argv,
    runsc_platform,
)


def spec(tmp_path: Path, **kw: object) -> VmSpec:
    base: dict[str, object] = dict(name="demo", kernel=Path("/dev/null"), initrd=Path("/dev/null"),
                                   root_image=tmp_path / "tree", run_dir=tmp_path / "run", accel="none")  # fmt: skip
    base.update(kw)
    return VmSpec.model_validate(base)


def test_config_runs_the_agent_over_stdio_with_limits(tmp_path: Path) -> None:
    cfg = oci_config(spec(tmp_path, cpus=2, memory_mib=768), root=tmp_path / "tree",
                     agent=Path("/a/msb-agent"), etc_files={}, netns=None)  # fmt: skip
    assert cfg["process"]["args"] == [AGENT_IN_GUEST, "--serve-stdio"]
    assert cfg["process"]["terminal"] is False
    assert cfg["root"] == {"path": str(tmp_path / "tree"), "readonly": False}
    assert cfg["hostname"] == "demo"
    res = cfg["linux"]["resources"]
    assert res["memory"]["limit"] == 768 << 20
    assert res["cpu"] == {"quota": 200_000, "period": 100_000}
    agent = [m for m in cfg["mounts"] if m["destination"] == AGENT_IN_GUEST]
    assert agent == [
        {"destination": AGENT_IN_GUEST, "type": "bind", "source": "/a/msb-agent", "options": ["rbind", "ro"]}
    ]
    # no network namespace path: runsc makes a new, empty one
    assert {"type": "network"} in cfg["linux"]["namespaces"]
    assert "CAP_SYS_ADMIN" not in cfg["process"]["capabilities"]["bounding"]


def test_config_binds_volumes_etc_files_and_joins_the_netns(tmp_path: Path) -> None:
    vols = (
        VolumeMount(host=tmp_path / "src", guest="/src", readonly=True),
        VolumeMount(host=tmp_path / "out", guest="/out"),
    )
    cfg = oci_config(spec(tmp_path, volumes=vols), root=tmp_path, agent=Path("/a"),
                     etc_files={"/etc/resolv.conf": tmp_path / "resolv.conf"},
                     netns=Path("/run/netns/msb-x"))  # fmt: skip
    by_dest = {m["destination"]: m for m in cfg["mounts"]}
    assert by_dest["/src"]["options"] == ["rbind", "ro"]
    assert by_dest["/out"]["options"] == ["rbind", "rw"]
    assert by_dest["/src"]["source"] == str(tmp_path / "src")
    assert by_dest["/etc/resolv.conf"]["options"] == ["rbind", "ro"]
    assert {"type": "network", "path": "/run/netns/msb-x"} in cfg["linux"]["namespaces"]


def test_argv_overlay_in_memory_unless_persistent(tmp_path: Path) -> None:
    eph = runsc_argv("/bin/runsc", spec(tmp_path), tmp_path / "st", ["--network=none"], tmp_path / "b")
    assert eph[0] == "/bin/runsc" and "--overlay2=root:memory" in eph and "--network=none" in eph
    assert eph[-3:] == ["run", f"--bundle={tmp_path / 'b'}", "msb-demo"]
    assert "--host-uds=none" in eph
    per = runsc_argv("/bin/runsc", spec(tmp_path, upper_image=tmp_path / "upper"), tmp_path / "st", [], tmp_path / "b")
    assert "--overlay2=none" in per and "--overlay2=root:memory" not in per
    assert container_id(spec(tmp_path)) == "msb-demo"


def test_platform_is_systrap_unless_set_and_checked(tmp_path: Path) -> None:
    assert "--platform=systrap" in runsc_argv("runsc", spec(tmp_path), tmp_path, [], tmp_path)
    assert "--platform=ptrace" in runsc_argv("runsc", spec(tmp_path), tmp_path, [], tmp_path, "ptrace")
    assert runsc_platform({}) == "systrap"
    assert runsc_platform({"MSB_GVISOR_PLATFORM": " ptrace "}) == "ptrace"
    with pytest.raises(ConfigError) as e:
        runsc_platform({"MSB_GVISOR_PLATFORM": "systrap --debug"})
    assert "systrap, ptrace, kvm" in (e.value.hint or "")


def test_layer_format_guard(tmp_path: Path) -> None:
    check_layer_format(tmp_path, "qemu", image=True)  # empty: fine for both
    check_layer_format(tmp_path, "gvisor", image=False)
    (tmp_path / "upper.ext4").write_bytes(b"x" * 10)
    check_layer_format(tmp_path, "qemu", image=True)
    with pytest.raises(ConfigError, match="--backend qemu"):
        check_layer_format(tmp_path, "gvisor", image=False)
    (tmp_path / "upper.ext4").unlink()
    (tmp_path / "upper" / "root").mkdir(parents=True)
    check_layer_format(tmp_path, "gvisor", image=False)
    with pytest.raises(ConfigError, match="--backend gvisor"):
        check_layer_format(tmp_path, "qemu", image=True)


def test_rw_volumes_are_refused_as_root_unless_allowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ro = VolumeMount(host=tmp_path, guest="/ro", readonly=True)
    rw = VolumeMount(host=tmp_path, guest="/rw")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv(RW_VOLUMES_ENV, raising=False)
    monkeypatch.setattr(gvisor, "reachable_by_others", lambda _: True)
    check_spec(spec(tmp_path, volumes=(ro,)))
    with pytest.raises(ConfigError, match="setuid-root") as info:
        check_spec(spec(tmp_path, volumes=(ro, rw)))
    assert RW_VOLUMES_ENV in str(info.value) and "read-only" in str(info.value)
    monkeypatch.setenv(RW_VOLUMES_ENV, "allow")
    check_spec(spec(tmp_path, volumes=(rw,)))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: neither is the gofer
    monkeypatch.delenv(RW_VOLUMES_ENV)
    check_spec(spec(tmp_path, volumes=(rw,)))


def test_a_rw_volume_only_root_can_reach_is_fine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv(RW_VOLUMES_ENV, raising=False)
    closed, opened = tmp_path / "closed" / "vol", Path(tempfile.mkdtemp(dir="/tmp"))
    closed.mkdir(parents=True)
    os.chmod(closed.parent, 0o700)
    os.chmod(opened, 0o755)
    try:
        assert not gvisor.reachable_by_others(closed) and gvisor.reachable_by_others(opened)
        check_spec(spec(tmp_path, volumes=(VolumeMount(host=closed, guest="/rw"),)))
        with pytest.raises(ConfigError, match="other users can reach"):
            check_spec(spec(tmp_path, volumes=(VolumeMount(host=opened, guest="/rw"),)))
    finally:
        os.rmdir(opened)


def test_runsc_configures_cgroups_in_the_sandboxs_own(tmp_path: Path) -> None:
    """runsc sizes the guest's MemTotal by the cgroup it configures: it must not ignore cgroups,
    and it is pointed at the sandbox's own cgroup."""
    assert "--ignore-cgroups" not in runsc_argv("runsc", spec(tmp_path), tmp_path, [], tmp_path)
    config = oci_config(spec(tmp_path), root=tmp_path, agent=tmp_path, etc_files={}, netns=None,
                        cgroup_path="/msb/x-1")  # fmt: skip
    assert config["linux"]["cgroupsPath"] == "/msb/x-1"
