"""Guest kernels: which one boots a sandbox, and how to get it.

Three kinds:

- ``minimal``: our own kernel, built from Debian's ``linux-source`` with
  ``kernel/msb-minimal.config`` by ``scripts/build-kernel.sh`` (``make kernel``). Everything
  is built in (no modules), 9p and vsock included. It boots fastest (docs/kernels.md), so it
  is the automatic first choice.
- ``debian``: Debian's cloud kernel ``linux-image-<abi>-cloud-amd64``, downloaded with
  ``apt-get download`` and unpacked into the cache. virtio, overlayfs and vsock are modules
  there; the ones the guest needs go into the initramfs (``/lib/msb-modules/``, load order
  in ``/lib/msb-modules/order``, see docs/protocol.md). It has no 9p.
- ``custom``: ``MSB_KERNEL=/path/to/bzImage`` (or a PVH ``vmlinux``). It must have
  everything the guest needs built in; no modules are loaded.

Both the minimal and the Debian kernel are booted as an uncompressed ELF ``vmlinux`` through
its PVH entry point when they have one: QEMU loads it directly, and the guest skips the
decompressor, which under TCG is 70 ms (minimal) to 450 ms (Debian) of the boot.

Cache layout (``MSB_CACHE_DIR``, default ``~/.cache/msb``)::

    kernel/minimal/{bzImage,vmlinux,version,config,patches,stamp}   scripts/build-kernel.sh
    kernel/debian-<abi>/boot/vmlinuz-<release>     the unpacked .deb (whole tree)
    kernel/debian-<abi>/vmlinux                    vmlinuz's payload, decompressed (PVH)
    kernel/debian-<abi>/msb-modules/*.ko           selected modules, uncompressed
    kernel/debian-<abi>/modules.json               what was selected, in load order

Kernel command-line parameters that depend on the kernel come from :meth:`Kernel.boot_args`.
"""

from __future__ import annotations

from engine.vm.kernel.apt import _deb822 as _deb822
from engine.vm.kernel.apt import _sha256 as _sha256
from engine.vm.kernel.debian import _decompress_module as _decompress_module
from engine.vm.kernel.debian import _select_modules as _select_modules
from engine.vm.kernel.debian import fetch_debian_kernel, load_cached_debian_kernel
from engine.vm.kernel.minimal import custom_kernel, load_minimal_kernel
from engine.vm.kernel.model import (
    DEBIAN_META_PACKAGE,
    DEBIAN_OPTIONAL_MODULES,
    DEBIAN_REQUIRED_MODULES,
    Kernel,
    KernelFetchError,
    KernelIntegrityError,
    KernelKind,
    KernelNotFoundError,
    default_cache_dir,
    extract_pvh_vmlinux,
    is_pvh_elf,
    read_bzimage_version,
)
from engine.vm.kernel.model import _module_name as _module_name
from engine.vm.kernel.resolve import available_kernels, main, resolve_kernel

__all__ = [
    "DEBIAN_META_PACKAGE",
    "DEBIAN_OPTIONAL_MODULES",
    "DEBIAN_REQUIRED_MODULES",
    "Kernel",
    "KernelFetchError",
    "KernelIntegrityError",
    "KernelKind",
    "KernelNotFoundError",
    "available_kernels",
    "custom_kernel",
    "default_cache_dir",
    "extract_pvh_vmlinux",
    "fetch_debian_kernel",
    "is_pvh_elf",
    "load_cached_debian_kernel",
    "load_minimal_kernel",
    "main",
    "read_bzimage_version",
    "resolve_kernel",
]
