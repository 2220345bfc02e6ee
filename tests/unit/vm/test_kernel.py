"""Kernel resolution, Debian package unpacking and module selection (no apt, no VMs)."""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.errors import KernelError
from engine.vm import kernel as kmod
from engine.vm.kernel import (
    Kernel,
    KernelFetchError,
    KernelNotFoundError,
    fetch_debian_kernel,
    load_cached_debian_kernel,
    read_bzimage_version,
    resolve_kernel,
)
from engine.vm.kernel import debian as kdebian
from engine.vm.kernel import resolve as kresolve

ELF = b"\x7fELF" + b"\0" * 60


def fake_bzimage(path: Path, release: str = "6.1.99-test") -> Path:
    """A file with just enough of the x86 boot header for read_bzimage_version."""
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    offset = 0x300 - 0x200
    data[0x20E:0x210] = offset.to_bytes(2, "little")
    text = f"{release} (builder@host) #1 SMP".encode() + b"\0"
    data[0x300 : 0x300 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSB_KERNEL", raising=False)
    monkeypatch.delenv("MSB_CACHE_DIR", raising=False)


def test_bzimage_version(tmp_path: Path) -> None:
    assert read_bzimage_version(fake_bzimage(tmp_path / "bz")) == "6.1.99-test"
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    assert read_bzimage_version(tmp_path / "junk") is None
    assert read_bzimage_version(tmp_path / "missing") is None


def test_deb822_parsing() -> None:
    text = "Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nVersion: 2\n"
    records = kmod._deb822(text)
    assert [r["Package"] for r in records] == ["a", "b"]
    assert records[0]["Description"] == "x\nmore"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_CACHE_DIR", str(tmp_path))
    assert kmod.default_cache_dir() == tmp_path


# --- resolve_kernel -------------------------------------------------------------------


def make_minimal(cache: Path) -> Path:
    d = cache / "kernel" / "minimal"
    fake_bzimage(d / "bzImage", "6.1.192-msb")
    (d / "version").write_text("6.1.192-msb\n")
    (d / "config").write_text("CONFIG_NET_9P=y\nCONFIG_NET_9P_VIRTIO=y\nCONFIG_9P_FS=y\nCONFIG_VSOCKETS=y\n")
    return d / "bzImage"


def test_env_kernel_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_minimal(tmp_path)
    custom = fake_bzimage(tmp_path / "mine" / "bzImage", "6.6.1-custom")
    monkeypatch.setenv("MSB_KERNEL", str(custom))
    k = resolve_kernel(tmp_path)
    assert (k.kind, k.version, k.modules) == ("custom", "6.6.1-custom", [])
    # an explicit choice beats the environment
    assert resolve_kernel(tmp_path, prefer="minimal").kind == "minimal"


def test_env_kernel_must_be_a_bzimage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_KERNEL", str(tmp_path / "nope"))
    with pytest.raises(KernelNotFoundError, match="does not exist"):
        resolve_kernel(tmp_path)
    (tmp_path / "vmlinux").write_bytes(ELF)
    monkeypatch.setenv("MSB_KERNEL", str(tmp_path / "vmlinux"))
    with pytest.raises(KernelNotFoundError, match="neither a bzImage"):
        resolve_kernel(tmp_path)


def test_minimal_preferred(tmp_path: Path) -> None:
    image = make_minimal(tmp_path)
    k = resolve_kernel(tmp_path)
    assert k.kind == "minimal" and k.path == image and k.version == "6.1.192-msb"
    assert k.supports_9p and not k.supports_vsock and k.modules == []


def test_no_kernel_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(cache_dir: Path) -> Kernel:
        raise KernelFetchError("apt-get: not installed")

    monkeypatch.setattr(kresolve, "fetch_debian_kernel", fail)
    with pytest.raises(KernelNotFoundError) as info:
        resolve_kernel(tmp_path)
    assert isinstance(info.value, KernelError)
    assert "make kernel" in str(info.value) and "MSB_KERNEL" in str(info.value)
    with pytest.raises(KernelNotFoundError, match="make kernel"):
        resolve_kernel(tmp_path, prefer="minimal")
    with pytest.raises(KernelError, match="unknown kernel kind"):
        resolve_kernel(tmp_path, prefer="fast")


# --- module selection -------------------------------------------------------------------


def make_moddir(root: Path, release: str, compress: bool = False) -> Path:
    moddir = root / "lib" / "modules" / release
    files = {
        "kernel/drivers/virtio/virtio_ring.ko": [],
        "kernel/drivers/virtio/virtio.ko": [],
        "kernel/drivers/virtio/virtio_mmio.ko": ["virtio", "virtio_ring"],
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko": [],
        "kernel/drivers/virtio/virtio_pci.ko": ["virtio_pci_modern_dev", "virtio", "virtio_ring"],
        "kernel/drivers/block/virtio_blk.ko": ["virtio", "virtio_ring"],
        "kernel/drivers/char/virtio_console.ko": ["virtio", "virtio_ring"],
        "kernel/net/core/failover.ko": [],
        "kernel/drivers/net/net_failover.ko": ["failover"],
        "kernel/drivers/net/virtio_net.ko": ["net_failover", "failover", "virtio", "virtio_ring"],
        "kernel/fs/overlayfs/overlay.ko": [],
        "kernel/fs/fuse/fuse.ko": [],
    }
    by_name = {Path(p).stem: p for p in files}
    lines = []
    for rel, deps in files.items():
        suffix = ".xz" if compress else ""
        target = moddir / (rel + suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.compress(ELF) if compress else ELF)
        lines.append(f"{rel}{suffix}: " + " ".join(by_name[d] + suffix for d in deps))
    (moddir / "modules.dep").write_text("\n".join(lines) + "\n")
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return moddir


def test_select_modules_orders_dependencies_first(tmp_path: Path) -> None:
    moddir = make_moddir(tmp_path, "6.1.0-1-cloud-amd64")
    files, builtin, absent = kmod._select_modules(moddir)
    names = [kmod._module_name(f.name) for f in files]
    assert builtin == ["ext4"] and absent == ["vmw_vsock_virtio_transport"]
    assert "fuse" not in names
    for mod, deps in [("virtio_net", ["failover", "net_failover", "virtio"]), ("virtio_mmio", ["virtio_ring"])]:
        assert all(names.index(d) < names.index(mod) for d in deps)
    assert len(names) == len(set(names))


def test_missing_required_module_is_an_error(tmp_path: Path) -> None:
    moddir = make_moddir(tmp_path, "6.1.0-1-cloud-amd64")
    (moddir / "modules.builtin").write_text("")
    with pytest.raises(KernelFetchError, match="ext4"):
        kmod._select_modules(moddir)


def test_compressed_modules_are_decompressed(tmp_path: Path) -> None:
    moddir = make_moddir(tmp_path, "6.1.0-1-cloud-amd64", compress=True)
    files, _, _ = kmod._select_modules(moddir)
    assert all(f.name.endswith(".ko.xz") for f in files)
    out = tmp_path / "virtio.ko"
    kmod._decompress_module(next(f for f in files if f.name == "virtio.ko.xz"), out)
    assert out.read_bytes() == ELF


# --- fetch_debian_kernel with a fake archive ----------------------------------------------


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_debian_kernel_unpacks_atomically_and_is_idempotent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    abi, version = "6.1.0-99", "6.1.999-1"
    release = f"{abi}-cloud-amd64"
    package = f"linux-image-{release}"
    pkgroot = tmp_path / "pkg"
    make_moddir(pkgroot, release, compress=True)
    fake_bzimage(pkgroot / "boot" / f"vmlinuz-{release}", release)
    (pkgroot / "boot" / f"config-{release}").write_text("CONFIG_VSOCKETS=m\n")
    (pkgroot / "DEBIAN").mkdir()
    (pkgroot / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n"
    )
    deb = tmp_path / f"{package}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "-b", str(pkgroot), str(deb)], check=True, capture_output=True)
    sha = kmod._sha256(deb)

    calls = {"download": 0}
    monkeypatch.setattr(kdebian, "_resolve_debian_package", lambda: (package, version, release))
    monkeypatch.setattr(kdebian, "_archive_record", lambda p, v: {"SHA256": sha, "Size": str(deb.stat().st_size)})

    def download(p: str, v: str, record: dict[str, str], dest: Path) -> Path:
        calls["download"] += 1
        target = dest / deb.name
        shutil.copy(deb, target)
        if record["SHA256"] != kmod._sha256(target):
            raise kmod.KernelIntegrityError("mismatch")
        return target

    monkeypatch.setattr(kdebian, "_download_deb", download)
    cache = tmp_path / "cache"
    (cache / "kernel").mkdir(parents=True)
    k = fetch_debian_kernel(cache)
    assert k.kind == "debian" and k.version == release
    assert k.path == cache / "kernel" / f"debian-{release}" / "boot" / f"vmlinuz-{release}"
    assert [m.name for m in k.modules][-1] == "overlay.ko"
    assert all(m.read_bytes() == ELF for m in k.modules)
    assert (cache / "kernel" / f"debian-{release}" / "modules.json").is_file()
    assert not list((cache / "kernel").glob(".debian-tmp-*"))

    assert fetch_debian_kernel(cache) == k and calls["download"] == 1
    assert load_cached_debian_kernel(cache) == k
    assert resolve_kernel(cache) == k  # no minimal kernel: the cached Debian one


# --- PVH (uncompressed ELF) kernels ---------------------------------------------------------


def fake_pvh_elf(path: Path, pvh: bool = True) -> Path:
    """A 64-bit ELF with one PT_NOTE segment holding a Xen PHYS32_ENTRY note (or another note)."""
    note_type = 18 if pvh else 1
    note = (4).to_bytes(4, "little") + (4).to_bytes(4, "little") + note_type.to_bytes(4, "little")
    note += b"Xen\0" + (0x1000000).to_bytes(4, "little")
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    ehdr[32:40] = (64).to_bytes(8, "little")  # e_phoff
    ehdr[54:56] = (56).to_bytes(2, "little")  # e_phentsize
    ehdr[56:58] = (1).to_bytes(2, "little")  # e_phnum
    phdr = bytearray(56)
    phdr[0:4] = (4).to_bytes(4, "little")  # PT_NOTE
    phdr[8:16] = (120).to_bytes(8, "little")  # p_offset
    phdr[32:40] = len(note).to_bytes(8, "little")  # p_filesz
    banner = b"Linux version 6.1.77-pvh (x@y) #1 SMP " + b"." * 100
    path.write_bytes(bytes(ehdr) + bytes(phdr) + note + banner)
    return path


def test_pvh_detection(tmp_path: Path) -> None:
    assert kmod.is_pvh_elf(fake_pvh_elf(tmp_path / "vmlinux"))
    assert not kmod.is_pvh_elf(fake_pvh_elf(tmp_path / "other", pvh=False))
    assert not kmod.is_pvh_elf(fake_bzimage(tmp_path / "bz"))


def test_custom_pvh_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSB_KERNEL", str(fake_pvh_elf(tmp_path / "vmlinux")))
    k = resolve_kernel(tmp_path)
    assert (k.kind, k.boot, k.version) == ("custom", "pvh", "6.1.77-pvh")


def test_extract_pvh_vmlinux_from_gzip_bzimage(tmp_path: Path) -> None:
    import gzip

    elf = fake_pvh_elf(tmp_path / "inner").read_bytes()
    payload = gzip.compress(elf)
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    image[0x206:0x208] = (0x20F).to_bytes(2, "little")
    image[0x248:0x24C] = (16).to_bytes(4, "little")  # payload_offset (from the protected-mode part)
    image[0x24C:0x250] = len(payload).to_bytes(4, "little")
    image += b"\0" * 16 + payload + b"trailing signature"
    (tmp_path / "vmlinuz").write_bytes(bytes(image))
    assert kmod.extract_pvh_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf
    # a payload that is not a PVH kernel is refused and leaves nothing behind
    assert not kmod.extract_pvh_vmlinux(fake_bzimage(tmp_path / "plain"), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_minimal_prefers_pvh_vmlinux_and_patch_flags(tmp_path: Path) -> None:
    make_minimal(tmp_path)
    d = tmp_path / "kernel" / "minimal"
    fake_pvh_elf(d / "vmlinux")
    (d / "patches").write_text("0001-lapic-timer-khz.patch\n")
    k = resolve_kernel(tmp_path)
    assert (k.path, k.boot) == (d / "vmlinux", "pvh")
    assert k.boot_args("tcg") == ["noreplace-smp", "cgroup_disable=memory", "tsc=reliable", "lapic_timer_khz=1000000"]
    assert k.boot_args("kvm") == ["noreplace-smp", "cgroup_disable=memory"]
