"""The guest kernel model, its errors and constants, and readers for bzImage and ELF images.

See :mod:`engine.vm.kernel` for the kinds of kernel and the cache layout.
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import KernelError

KernelKind = Literal["debian", "minimal", "custom"]

DEBIAN_META_PACKAGE = "linux-image-cloud-amd64"
"""Metapackage whose ``Depends`` names the newest versioned cloud kernel."""

DEBIAN_REQUIRED_MODULES: tuple[str, ...] = (
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "ext4",
    "overlay",
)
"""Modules the guest cannot boot without (skipped when built in)."""

DEBIAN_OPTIONAL_MODULES: tuple[str, ...] = ("vmw_vsock_virtio_transport",)
"""Modules loaded when the package has them (vsock is an alternative host channel).

9p (``9pnet``, ``9pnet_virtio``, ``9p``) is not listed: the cloud kernel is built without
``CONFIG_NET_9P``, so there is nothing to load, and changing this list makes every cached
Debian kernel be fetched again. Volumes need the minimal kernel (``supports_9p``)."""

QEMU_LAPIC_TIMER_KHZ = 1_000_000
"""QEMU's emulated local APIC timer input clock (1 GHz), for ``lapic_timer_khz=``."""

MODULES_JSON_FORMAT = 2


class KernelNotFoundError(KernelError):
    """No usable guest kernel is available (the hint says how to get one)."""


class KernelFetchError(KernelError):
    """Downloading or unpacking Debian's kernel package failed."""


class KernelIntegrityError(KernelFetchError):
    """A downloaded package does not match the archive's checksum."""


class Kernel(BaseModel):
    """A guest kernel ready to boot.

    ``modules`` are uncompressed ``.ko`` files in load order (dependencies first); the
    initramfs builder copies them to ``/lib/msb-modules/`` and lists their file names in
    ``/lib/msb-modules/order``. File names are unique.
    """

    model_config = ConfigDict(frozen=True)

    kind: KernelKind
    path: Path
    """The file given to QEMU's ``-kernel``: an uncompressed ``vmlinux`` with a PVH entry
    point when there is one (no decompression: faster), else the bzImage/vmlinuz."""
    boot: Literal["bzimage", "pvh"] = "bzimage"
    """How QEMU enters ``path``: the Linux boot protocol, or the PVH ELF entry point."""
    version: str
    """The kernel release (``uname -r``), e.g. ``6.1.0-56-cloud-amd64`` or ``6.1.192-msb``."""
    modules: list[Path] = Field(default_factory=list)
    """Uncompressed modules in load order; empty when everything is built in."""
    config: Path | None = None
    """The kernel's ``.config`` when known."""
    source: str = ""
    """Where it came from, for humans (package and version, build stamp, env variable)."""
    supports_9p: bool = False
    """9p over virtio (``-fsdev``/``virtio-9p``) can be mounted: built in or among ``modules``."""
    supports_vsock: bool = False
    """virtio-vsock works: built in or among ``modules``."""
    virtio_mmio_cmdline: bool = False
    """``virtio_mmio.device=`` on the command line is understood (microvm with ``acpi=off``)."""
    lapic_timer_khz_param: bool = False
    """The kernel understands ``lapic_timer_khz=`` (kernel/patches/0001-lapic-timer-khz.patch)."""

    def boot_args(self, accel: Literal["kvm", "tcg"]) -> list[str]:
        """Kernel parameters that make this kernel boot faster or keep time correctly.

        Measured under TCG (docs/kernels.md): ``noreplace-smp`` skips rewriting every
        ``lock`` prefix of a one-CPU guest (~100 ms under TCG), ``lapic_timer_khz=1000000``
        skips the 100 ms local APIC timer calibration (QEMU's APIC timer runs at 1 GHz).
        Under TCG the guest TSC is the host TSC, so ``tsc=reliable`` is true and stops the
        clocksource watchdog from demoting it to jiffies when the host is busy. The host's
        ``tsc_early_khz=`` is left to the caller (it depends on the host, not the kernel).

        Args:
            accel: the accelerator the VM runs with.

        Returns:
            Parameters to append to the kernel command line.
        """
        # Memory is bounded by the VM's RAM, so the guest's memory cgroup only costs: a charge
        # on every page fault (~0.1 ms of a 2 ms exec round trip under TCG, measured).
        args = ["noreplace-smp", "cgroup_disable=memory"]
        if accel == "tcg":
            args.append("tsc=reliable")
            if self.lapic_timer_khz_param:
                args.append(f"lapic_timer_khz={QEMU_LAPIC_TIMER_KHZ}")
        return args

    @property
    def module_names(self) -> list[str]:
        """Module names (file name without ``.ko``, ``-`` as ``_``) in load order."""
        return [_module_name(p.name) for p in self.modules]


# --------------------------------------------------------------------------------------
# small helpers


def default_cache_dir() -> Path:
    """Return the cache directory: ``MSB_CACHE_DIR`` or ``~/.cache/msb`` (not created).

    Returns:
        The directory path.
    """
    env = os.environ.get("MSB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "msb"


def read_bzimage_version(path: Path) -> str | None:
    """Read the kernel release from a bzImage's boot-protocol header.

    Args:
        path: a bzImage / vmlinuz file.

    Returns:
        The release (first word of the version string, e.g. ``6.1.192-msb``), or ``None``
        when the file is not a bzImage or has no version string.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            offset = int.from_bytes(head[0x20E:0x210], "little")
            if offset == 0:
                return None
            f.seek(offset + 0x200)
            raw = f.read(256).split(b"\0", 1)[0]
    except OSError:
        return None
    words = raw.decode("ascii", "replace").split()
    return words[0] if words else None


def is_pvh_elf(path: Path) -> bool:
    """Whether ``path`` is a 64-bit ELF kernel with a PVH entry point (Xen note type 18).

    Args:
        path: a vmlinux file.

    Returns:
        ``True`` if QEMU can boot it with ``-kernel`` through PVH.
    """
    try:
        with open(path, "rb") as f:
            ehdr = f.read(64)
            if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
                return False
            phoff = int.from_bytes(ehdr[32:40], "little")
            phentsize = int.from_bytes(ehdr[54:56], "little")
            phnum = int.from_bytes(ehdr[56:58], "little")
            if phentsize < 56 or phnum > 64:
                return False
            f.seek(phoff)
            phdrs = f.read(phentsize * phnum)
            for i in range(phnum):
                ph = phdrs[i * phentsize : (i + 1) * phentsize]
                if int.from_bytes(ph[0:4], "little") != 4:  # PT_NOTE
                    continue
                offset = int.from_bytes(ph[8:16], "little")
                size = min(int.from_bytes(ph[32:40], "little"), 1 << 16)
                f.seek(offset)
                notes = f.read(size)
                pos = 0
                while pos + 12 <= len(notes):
                    namesz = int.from_bytes(notes[pos : pos + 4], "little")
                    descsz = int.from_bytes(notes[pos + 4 : pos + 8], "little")
                    ntype = int.from_bytes(notes[pos + 8 : pos + 12], "little")
                    name = notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
                    if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                        return True
                    pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    except OSError:
        return False
    return False


def _module_name(file_name: str) -> str:
    """``virtio-rng.ko.xz`` → ``virtio_rng`` (the kernel treats ``-`` and ``_`` alike)."""
    base = file_name
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def _parse_kconfig(path: Path | None) -> dict[str, str]:
    """Parse ``CONFIG_X=value`` lines of a kernel ``.config`` (missing file → empty)."""
    values: dict[str, str] = {}
    if path is None:
        return values
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return values
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            values[key.removeprefix("CONFIG_")] = value
    return values


def _capabilities(config: dict[str, str], modules: set[str]) -> dict[str, bool]:
    """Capability flags from a kernel config plus the modules that will be loaded."""

    def have(option: str, module: str) -> bool:
        value = config.get(option)
        return value == "y" or (value == "m" and module in modules)

    return {
        "supports_9p": have("NET_9P", "9pnet") and have("NET_9P_VIRTIO", "9pnet_virtio") and have("9P_FS", "9p"),
        "supports_vsock": have("VSOCKETS", "vsock") and have("VIRTIO_VSOCKETS", "vmw_vsock_virtio_transport"),
        "virtio_mmio_cmdline": config.get("VIRTIO_MMIO_CMDLINE_DEVICES") == "y",
    }


def extract_pvh_vmlinux(vmlinuz: Path, out: Path) -> bool:
    """Decompress the kernel inside a bzImage into ``out`` if it can boot through PVH.

    The bzImage payload (``payload_offset``/``payload_length`` in the boot header) is the
    compressed ELF vmlinux. QEMU's ``-kernel`` loads such an ELF directly through its PVH
    entry point, which skips the decompressor: Debian's cloud kernel reaches init ~0.45 s
    sooner under TCG (docs/kernels.md). gzip and xz are decompressed here; LZ4 (Debian's
    choice) and zstd need the ``lz4``/``zstd`` tools. Anything unexpected → ``False`` and
    the bzImage is used as before.

    Args:
        vmlinuz: the bzImage.
        out: where to write the ELF kernel.

    Returns:
        ``True`` if ``out`` now holds an ELF kernel with a PVH entry point.
    """
    try:
        data = vmlinuz.read_bytes()
    except OSError:
        return False
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS" or int.from_bytes(data[0x206:0x208], "little") < 0x208:
        return False
    start = ((data[0x1F1] or 4) + 1) * 512 + int.from_bytes(data[0x248:0x24C], "little")
    length = int.from_bytes(data[0x24C:0x250], "little")
    payload = data[start : start + length]
    if len(payload) != length or length < 16:
        return False
    # all formats but gzip get the uncompressed size appended (scripts/Makefile.lib size_append)
    body, size = payload[:-4], int.from_bytes(payload[-4:], "little")
    raw: bytes | None = None
    try:
        if payload[:2] == b"\x1f\x8b":
            raw, size = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload), -1
        elif payload[:6] == b"\xfd7zXZ\x00":
            raw = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(body)
        else:
            tool = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}.get(payload[:4])
            exe = shutil.which(tool) if tool else None
            if exe is not None:
                proc = subprocess.run([exe, "-d", "-c"], input=body, capture_output=True, check=False, timeout=120)
                raw = proc.stdout if proc.returncode == 0 else None
    except (zlib.error, lzma.LZMAError, OSError, subprocess.TimeoutExpired):
        raw = None
    if not raw or raw[:4] != b"\x7fELF" or (size >= 0 and len(raw) != size):
        return False
    out.write_bytes(raw)
    if is_pvh_elf(out):
        return True
    out.unlink()
    return False
