"""The minimal kernel built by ``scripts/build-kernel.sh`` and user-supplied (``MSB_KERNEL``) kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from engine.vm.kernel.model import (
    Kernel,
    KernelNotFoundError,
    _capabilities,
    _parse_kconfig,
    default_cache_dir,
    is_pvh_elf,
    read_bzimage_version,
)

# --------------------------------------------------------------------------------------
# minimal and custom kernels


def load_minimal_kernel(cache_dir: Path | None = None) -> Kernel | None:
    """Return the minimal kernel built by ``scripts/build-kernel.sh``, if it is there.

    Args:
        cache_dir: the msb cache (default :func:`default_cache_dir`).

    Returns:
        The kernel, or ``None`` when ``kernel/minimal/bzImage`` has not been built.
    """
    d = (cache_dir or default_cache_dir()) / "kernel" / "minimal"
    bzimage, vmlinux = d / "bzImage", d / "vmlinux"
    if not bzimage.is_file():
        return None
    # the uncompressed PVH vmlinux boots ~70 ms faster under TCG (no LZ4 decompression)
    pvh = vmlinux.is_file() and is_pvh_elf(vmlinux)
    image = vmlinux if pvh else bzimage
    try:
        version = (d / "version").read_text().strip()
    except OSError:
        version = ""
    version = version or read_bzimage_version(bzimage) or "unknown"
    config = d / "config" if (d / "config").is_file() else None
    try:
        stamp = (d / "stamp").read_text().strip()[:12]
    except OSError:
        stamp = "?"
    try:
        patches = (d / "patches").read_text().split()
    except OSError:
        patches = []
    return Kernel(
        kind="minimal",
        path=image,
        boot="pvh" if pvh else "bzimage",
        version=version,
        config=config,
        source=f"scripts/build-kernel.sh (stamp {stamp})",
        lapic_timer_khz_param=any("lapic-timer-khz" in p for p in patches),
        **_capabilities(_parse_kconfig(config), set()),
    )


def _elf_banner_version(path: Path) -> str | None:
    """Find ``Linux version X`` in an uncompressed kernel image; return ``X``."""
    tail = b""
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                data = tail + block
                i = data.find(b"Linux version ")
                if i >= 0 and len(data) - i > 80:
                    words = data[i + 14 : i + 80].split(b" ", 1)
                    return words[0].decode("ascii", "replace") or None
                tail = data[-100:]
    except OSError:
        return None
    return None


def custom_kernel(path: Path) -> Kernel:
    """Describe a user-supplied kernel (``MSB_KERNEL``); it must need no modules.

    A bzImage, or an uncompressed ``vmlinux`` with a PVH entry point. A ``.config`` is
    looked for beside it (``config``, ``config-<release>`` or ``<name>.config``) to fill the
    capability flags; without one they are ``False``.

    Args:
        path: the kernel image.

    Returns:
        The kernel (kind ``custom``).

    Raises:
        KernelNotFoundError: the file does not exist or is neither a bzImage nor a PVH ELF.
    """
    path = path.expanduser().resolve()
    if not path.is_file():
        raise KernelNotFoundError(
            f"MSB_KERNEL points to {path}, which does not exist",
            hint="set MSB_KERNEL to a bzImage, or unset it to use `make kernel`'s kernel",
        )
    boot: Literal["bzimage", "pvh"] = "bzimage"
    version = read_bzimage_version(path)
    if version is None:
        if not is_pvh_elf(path):
            raise KernelNotFoundError(
                f"MSB_KERNEL={path} is neither a bzImage nor an ELF kernel with a PVH entry point",
                hint="use arch/x86/boot/bzImage (or a vmlinux built with CONFIG_PVH=y)",
            )
        boot = "pvh"
        version = _elf_banner_version(path) or "unknown"
    config = next(
        (
            c
            for c in (path.parent / "config", path.parent / f"config-{version}", path.with_suffix(".config"))
            if c.is_file()
        ),
        None,
    )
    return Kernel(
        kind="custom",
        path=path,
        boot=boot,
        version=version,
        config=config,
        source="MSB_KERNEL",
        **_capabilities(_parse_kconfig(config), set()),
    )
