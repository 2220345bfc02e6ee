"""QEMU arguments and boot parameters for 9p volumes, and the checks on them (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.spec import VolumeMount
from engine.vm.qemu import build_argv, kernel_cmdline
from engine.vm.volumes import check_host_dirs, check_volumes, encode_guest_path, volume_args
from tests.unit.vm.test_qemu_argv import SOCKETS, make_spec, option_values


def vol(guest: str, host: str = "/srv/data", readonly: bool = False) -> VolumeMount:
    return VolumeMount(host=Path(host), guest=guest, readonly=readonly)


def test_rw_and_ro_volumes_on_microvm(tmp_path: Path) -> None:
    spec = make_spec(volumes=(vol("/data", str(tmp_path)), vol("/ref", "/srv/ref", readonly=True)))
    argv = build_argv("q", spec, SOCKETS)
    assert option_values(argv, "-fsdev") == [  # tmp_path is on a file system with user xattrs
        f"local,id=vol0,path={tmp_path},security_model=mapped-xattr,multidevs=remap,fmode=0644,dmode=0755",
        "local,id=vol1,path=/srv/ref,security_model=none,multidevs=remap,readonly=on",
    ]
    devices = option_values(argv, "-device")
    assert "virtio-9p-device,fsdev=vol0,mount_tag=msbvol0" in devices
    assert "virtio-9p-device,fsdev=vol1,mount_tag=msbvol1" in devices
    words = kernel_cmdline(spec).split()
    assert "msb.vol=msbvol0:rw:/data" in words and "msb.vol=msbvol1:ro:/ref" in words


def test_q35_uses_pci_9p_devices() -> None:
    argv = build_argv("q", make_spec(machine="q35", volumes=(vol("/data"),)), SOCKETS)
    assert "virtio-9p-pci,fsdev=vol0,mount_tag=msbvol0" in option_values(argv, "-device")


def test_no_volumes_no_9p() -> None:
    spec = make_spec()
    assert "-fsdev" not in build_argv("q", spec, SOCKETS)
    assert "msb.vol" not in kernel_cmdline(spec)


def test_host_path_commas_are_escaped_for_qemu() -> None:
    args = volume_args(make_spec(volumes=(vol("/data", "/srv/a,readonly=off"),)), lambda k: f"{k}-device")
    assert args[1].startswith("local,id=vol0,path=/srv/a,,readonly=off,security_model=")
    assert args[1].endswith(",fmode=0644,dmode=0755")


def test_rw_volumes_never_apply_guest_modes_on_the_host(tmp_path: Path) -> None:
    """A hostile guest must not create setuid files or device nodes in the host directory."""
    from engine.vm.volumes import security_model

    assert security_model(str(tmp_path), readonly=False) == "mapped-xattr"
    assert security_model("/nonexistent-dir", readonly=False) == "mapped-file"  # no xattrs there
    assert security_model(str(tmp_path), readonly=True) == "none"


def test_guest_paths_are_encoded_for_the_command_line() -> None:
    assert encode_guest_path("/work/my data/ü%") == "/work/my%20data/%C3%BC%25"
    assert encode_guest_path("/a-b_c.d/e+f@g=h,i~j") == "/a-b_c.d/e+f@g=h,i~j"
    spec = make_spec(volumes=(vol("/my data"),))
    assert "msb.vol=msbvol0:rw:/my%20data" in kernel_cmdline(spec).split()


@pytest.mark.parametrize(
    ("guest", "message"),
    [
        ("/data\nx", "control characters"),
        ("/data/", "not normalised"),
        ("/a//b", "not normalised"),
        ("/a/./b", "not normalised"),
        ("/proc/x", "/dev, /proc or /sys"),
        ("/dev", "/dev, /proc or /sys"),
        ("/" + "x" * 300, "longer than 255 bytes"),
    ],
)
def test_bad_guest_paths_are_refused(guest: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_argv("q", make_spec(volumes=(vol(guest),)), SOCKETS)


def test_spec_itself_refuses_relative_root_and_dotdot() -> None:
    for guest in ("data", "/", "/a/../b"):
        with pytest.raises(ValueError, match="absolute directory"):
            vol(guest)


@pytest.mark.parametrize(("a", "b"), [("/data", "/data"), ("/data", "/data/sub"), ("/data/sub", "/data")])
def test_overlapping_guest_paths_are_refused(a: str, b: str) -> None:
    with pytest.raises(ConfigError, match="overlap"):
        check_volumes((vol(a), vol(b, "/srv/other")))
    check_volumes((vol("/data"), vol("/database")))  # a shared prefix is not nesting


def test_at_most_sixteen_volumes() -> None:
    check_volumes(tuple(vol(f"/v{i}") for i in range(16)))
    with pytest.raises(ConfigError, match="at most 16"):
        check_volumes(tuple(vol(f"/v{i}") for i in range(17)))


def test_a_command_line_over_the_kernel_limit_is_refused() -> None:
    long = tuple(vol("/" + f"{i:x}" * 60 + "/" + "é" * 50) for i in range(12))
    with pytest.raises(ConfigError, match=r"command line would be .* bytes") as info:
        kernel_cmdline(make_spec(volumes=long))
    assert "fewer volumes" in (info.value.hint or "")


def test_host_directories_must_exist(tmp_path: Path) -> None:
    check_host_dirs((vol("/data", str(tmp_path)),))
    (tmp_path / "file").write_text("x")
    for host in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(ConfigError, match="does not exist or is not a directory"):
            check_host_dirs((vol("/data", str(host)),))
