"""The QEMU command line and the guest kernel command line (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.vm import cmdline
from engine.vm.backend import VmSpec
from engine.vm.qemu import build_argv, kernel_cmdline

SOCKETS = {"agent": Path("/run/a.sock"), "console": Path("/run/c.sock"), "qmp": Path("/run/q.sock")}


def make_spec(**kw: object) -> VmSpec:
    base: dict[str, object] = dict(name="demo", kernel=Path("/k/bzImage"), initrd=Path("/k/initrd"),
                                   root_image=Path("/img/root.ext4"), run_dir=Path("/run"))  # fmt: skip
    return VmSpec(**(base | kw))  # type: ignore[arg-type]


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.fixture(autouse=True)
def _tsc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmdline, "host_tsc_khz", lambda: 2_400_000)


def test_microvm_uses_mmio_devices() -> None:
    argv = build_argv("/usr/bin/qemu", make_spec(machine="microvm"), SOCKETS)
    assert option_values(argv, "-M")[0].startswith("microvm,")
    devices = option_values(argv, "-device")
    assert "virtio-serial-device" in devices and "virtio-rng-device" in devices
    assert "virtio-blk-device,drive=root,serial=msb-root" in devices
    assert not any("-pci" in d for d in devices)


def test_q35_uses_pci_devices() -> None:
    argv = build_argv("/usr/bin/qemu", make_spec(machine="q35"), SOCKETS)
    assert option_values(argv, "-M")[0].startswith("q35,")
    devices = option_values(argv, "-device")
    assert "virtio-serial-pci" in devices and "virtio-rng-pci" in devices
    assert "virtio-blk-pci,drive=root,serial=msb-root" in devices
    assert not any(d.endswith("-device") for d in devices)


def test_kvm_and_tcg_flags() -> None:
    kvm = build_argv("q", make_spec(accel="kvm"), SOCKETS)
    assert option_values(kvm, "-accel") == ["kvm"] and option_values(kvm, "-cpu") == ["host"]
    tcg = build_argv("q", make_spec(accel="tcg"), SOCKETS)
    assert option_values(tcg, "-accel") == ["tcg"] and option_values(tcg, "-cpu") == ["max"]


@pytest.mark.parametrize(
    ("accel", "machine", "expected"),
    [("tcg", "microvm", True), ("kvm", "microvm", False), ("tcg", "q35", False), ("kvm", "q35", False)],
)
def test_tsc_early_khz_only_for_tcg_microvm(accel: str, machine: str, expected: bool) -> None:
    line = kernel_cmdline(make_spec(accel=accel, machine=machine))
    assert ("tsc_early_khz=2400000" in line.split()) is expected


def test_unknown_tsc_rate_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmdline, "host_tsc_khz", lambda: None)
    assert "tsc_early_khz" not in kernel_cmdline(make_spec(accel="tcg", machine="microvm"))


def test_ephemeral_upper_is_tmpfs() -> None:
    spec = make_spec()
    words = kernel_cmdline(spec).split()
    assert "msb.upper=tmpfs" in words and "msb.sync=1" not in words
    assert not any("upper" in d for d in option_values(build_argv("q", spec, SOCKETS), "-drive"))


def test_persistent_upper_adds_vdb_and_sync() -> None:
    spec = make_spec(upper_image=Path("/state/upper.ext4"))
    words = kernel_cmdline(spec).split()
    assert "msb.upper=/dev/vdb" in words and "msb.sync=1" in words and "msb.upper=tmpfs" not in words
    drives = option_values(build_argv("q", spec, SOCKETS), "-drive")
    assert drives[0] == "file=/img/root.ext4,if=none,id=root,format=raw,readonly=on"
    assert drives[1].startswith("file=/state/upper.ext4,if=none,id=upper,")  # vda is root, vdb the upper


def test_hardening_and_plumbing() -> None:
    argv = build_argv("/usr/bin/qemu", make_spec(cpus=2, memory_mib=768), SOCKETS)
    assert argv[0] == "/usr/bin/qemu"
    sandbox = option_values(argv, "-sandbox")
    assert len(sandbox) == 1 and sandbox[0].startswith("on,") and "spawn=deny" in sandbox[0]
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert option_values(argv, "-smp") == ["2"] and option_values(argv, "-m") == ["768"]
    assert option_values(argv, "-kernel") == ["/k/bzImage"] and option_values(argv, "-initrd") == ["/k/initrd"]
    chardevs = option_values(argv, "-chardev")
    assert {c.split("path=")[1] for c in chardevs} == {str(p) for p in SOCKETS.values()}
    assert "virtserialport,chardev=agent,name=msb.0" in option_values(argv, "-device")


def test_cmdline_names_the_boot_parameters() -> None:
    words = kernel_cmdline(make_spec(name="x" * 70, extra_cmdline="debug")).split()
    assert {"console=ttyS0", "msb.root=/dev/vda", "msb.port=msb.0", "rdinit=/init", "panic=-1"} <= set(words)
    assert f"msb.hostname={'x' * 63}" in words
    assert words[-1] == "debug"


def test_kernel_args_reach_the_command_line() -> None:
    argv = build_argv("/usr/bin/qemu", make_spec(kernel_args=("noreplace-smp", "tsc=reliable")), SOCKETS)
    cmdline = option_values(argv, "-append")[0]
    assert "noreplace-smp" in cmdline.split() and "tsc=reliable" in cmdline.split()


def test_confined_qemu_chroots_and_drops_to_the_vmm_user() -> None:
    argv = build_argv("qemu", make_spec(), SOCKETS, runas="msb-vmm", chroot=Path("/run/x/vmm-root"))
    assert option_values(argv, "-runas") == ["msb-vmm"] and option_values(argv, "-chroot") == ["/run/x/vmm-root"]
    # -runas calls setuid() under the filter; with nothing left to elevate to afterwards
    assert "elevateprivileges=allow" in option_values(argv, "-sandbox")[0]
    plain = build_argv("qemu", make_spec(), SOCKETS)
    assert "-runas" not in plain and "elevateprivileges=deny" in option_values(plain, "-sandbox")[0]


def test_volumes_reach_qemu_as_inherited_fds(tmp_path: Path) -> None:
    from engine.sandbox.spec import VolumeMount

    spec = make_spec(volumes=(VolumeMount(host=tmp_path, guest="/data", readonly=True),))
    argv = build_argv("qemu", spec, SOCKETS, volume_fds=[12])
    assert option_values(argv, "-fsdev")[0].startswith("local,id=vol0,path=/proc/self/fd/12,")
