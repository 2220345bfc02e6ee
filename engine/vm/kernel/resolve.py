"""Choosing the guest kernel, listing the available ones, and ``python -m engine.vm.kernel``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from engine.errors import KernelError
from engine.vm.kernel.debian import fetch_debian_kernel, load_cached_debian_kernel
from engine.vm.kernel.minimal import custom_kernel, load_minimal_kernel
from engine.vm.kernel.model import Kernel, KernelNotFoundError, default_cache_dir

_AUTO_ORDER: tuple[Literal["minimal", "debian"], ...] = ("minimal", "debian")
"""Automatic choice, fastest first: the minimal kernel reaches init in well under half the
time of Debian's cloud kernel under TCG (docs/kernels.md)."""

_HINT_NO_KERNEL = (
    "run `make kernel` (builds the fast minimal kernel, ~5 min) or `make setup` "
    "(fetches Debian's cloud kernel), or set MSB_KERNEL=/path/to/bzImage"
)


# --------------------------------------------------------------------------------------
# the choice


def resolve_kernel(cache_dir: Path | None = None, prefer: str | None = None) -> Kernel:
    """Pick the guest kernel.

    Without ``prefer``: ``MSB_KERNEL`` (a bzImage, kind ``custom``) wins; else the minimal
    kernel if it has been built (it boots fastest); else Debian's cloud kernel, from the
    cache or fetched now with apt.

    Args:
        cache_dir: the msb cache (default ``MSB_CACHE_DIR`` or ``~/.cache/msb``).
        prefer: ``"minimal"``, ``"debian"`` or ``"custom"`` to ask for one kind; an explicit
            choice overrides ``MSB_KERNEL`` and fails instead of falling back.

    Returns:
        The kernel to boot.

    Raises:
        KernelNotFoundError: no usable kernel; the hint names `make kernel`, `make setup`
            and MSB_KERNEL.
        KernelError: ``prefer`` is not a known kind, or fetching Debian's kernel failed
            when it was asked for explicitly.
    """
    cache = cache_dir or default_cache_dir()
    if prefer not in (None, "minimal", "debian", "custom"):
        raise KernelError(f"unknown kernel kind {prefer!r}", hint="use 'minimal', 'debian' or 'custom' (MSB_KERNEL)")
    env = os.environ.get("MSB_KERNEL")
    if prefer == "custom" or (prefer is None and env):
        if not env:
            raise KernelNotFoundError(
                "a custom kernel was asked for but MSB_KERNEL is not set",
                hint="set MSB_KERNEL=/path/to/bzImage",
            )
        return custom_kernel(Path(env))
    if prefer == "minimal":
        kernel = load_minimal_kernel(cache)
        if kernel is None:
            raise KernelNotFoundError(
                f"the minimal kernel is not built ({cache / 'kernel' / 'minimal' / 'bzImage'} is missing)",
                hint="run `make kernel`",
            )
        return kernel
    if prefer == "debian":
        return load_cached_debian_kernel(cache) or fetch_debian_kernel(cache)

    for kind in _AUTO_ORDER:
        kernel = load_minimal_kernel(cache) if kind == "minimal" else load_cached_debian_kernel(cache)
        if kernel is not None:
            return kernel
    try:
        return fetch_debian_kernel(cache)
    except KernelError as exc:
        raise KernelNotFoundError(
            f"no guest kernel found in {cache / 'kernel'}, and Debian's could not be fetched: {exc.message}",
            hint=_HINT_NO_KERNEL,
        ) from exc


def available_kernels(cache_dir: Path | None = None) -> list[Kernel]:
    """Every kernel present without fetching: ``MSB_KERNEL``, the minimal and the cached
    Debian kernel (in that order; for benchmarks and ``msb doctor``).

    Args:
        cache_dir: the msb cache (default ``MSB_CACHE_DIR`` or ``~/.cache/msb``).

    Returns:
        The kernels found (possibly none).
    """
    cache = cache_dir or default_cache_dir()
    found: list[Kernel] = []
    env = os.environ.get("MSB_KERNEL")
    if env:
        found.append(custom_kernel(Path(env)))
    for kernel in (load_minimal_kernel(cache), load_cached_debian_kernel(cache)):
        if kernel is not None:
            found.append(kernel)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.vm.kernel``: show (or with ``--ensure`` fetch) the guest kernels.

    Used by ``make setup`` to fetch Debian's kernel into the cache.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.vm.kernel", description=main.__doc__)
    parser.add_argument("--ensure", action="store_true", help="fetch Debian's cloud kernel if it is not cached")
    args = parser.parse_args(argv)
    cache = default_cache_dir()
    try:
        if args.ensure and load_cached_debian_kernel(cache) is None:
            fetch_debian_kernel(cache)
        default = resolve_kernel(cache)
    except KernelError as exc:
        print(f"msb: error: {exc}", file=sys.stderr)
        return 1
    for kernel in available_kernels(cache):
        mark = "*" if kernel.path == default.path else " "
        print(f"{mark} {kernel.kind:8} {kernel.version:28} {kernel.path}")
    return 0
