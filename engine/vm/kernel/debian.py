"""Debian's cloud kernel: unpacking the package, selecting its modules, and the cache."""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ValidationError

from engine.vm.kernel.apt import _archive_record, _download_deb, _locked, _resolve_debian_package, _run, _sha256
from engine.vm.kernel.model import (
    DEBIAN_OPTIONAL_MODULES,
    DEBIAN_REQUIRED_MODULES,
    MODULES_JSON_FORMAT,
    Kernel,
    KernelFetchError,
    _capabilities,
    _module_name,
    _parse_kconfig,
    default_cache_dir,
    extract_pvh_vmlinux,
)

# --------------------------------------------------------------------------------------
# Debian's cloud kernel


class _ModuleEntry(BaseModel):
    name: str
    file: str
    """File name under ``msb-modules/`` (uncompressed)."""
    source: str
    """Path of the original (maybe compressed) file, relative to the unpacked tree."""
    sha256: str


class _ModulesJson(BaseModel):
    """``kernel/debian-<abi>/modules.json``."""

    format: int
    package: str
    package_version: str
    deb_sha256: str
    release: str
    vmlinuz: str
    """Relative to the directory."""
    vmlinux: str | None = None
    """The uncompressed kernel extracted from ``vmlinuz``, when it has a PVH entry point."""
    config: str | None = None
    requested: list[str]
    modules: list[_ModuleEntry]
    """Load order, dependencies first."""
    builtin: list[str]
    """Requested modules that are built into this kernel (nothing to load)."""
    absent: list[str]
    """Optional modules this package does not have."""


def _debian_kernel_from_dir(d: Path, expect_version: str | None = None) -> Kernel | None:
    """Load an unpacked Debian kernel from ``d`` if it is complete and current."""
    try:
        meta = _ModulesJson.model_validate_json((d / "modules.json").read_bytes())
    except (OSError, ValidationError, ValueError):
        return None
    if meta.format != MODULES_JSON_FORMAT or meta.requested != _requested_modules():
        return None
    if expect_version is not None and meta.package_version != expect_version:
        return None
    pvh = meta.vmlinux is not None and (d / meta.vmlinux).is_file()
    image = d / meta.vmlinux if pvh and meta.vmlinux else d / meta.vmlinuz
    modules = [d / "msb-modules" / m.file for m in meta.modules]
    if not image.is_file() or not all(m.is_file() for m in modules):
        return None
    config = d / meta.config if meta.config else None
    return Kernel(
        kind="debian",
        path=image,
        boot="pvh" if pvh else "bzimage",
        version=meta.release,
        modules=modules,
        config=config,
        source=f"{meta.package} {meta.package_version}",
        **_capabilities(_parse_kconfig(config), {m.name for m in meta.modules}),
    )


def _requested_modules() -> list[str]:
    return [*DEBIAN_REQUIRED_MODULES, *DEBIAN_OPTIONAL_MODULES]


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Rough Debian version ordering for picking the newest cached kernel."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[a-z]+", version))


def load_cached_debian_kernel(cache_dir: Path | None = None) -> Kernel | None:
    """Return the newest Debian kernel already unpacked in the cache, without asking apt.

    Args:
        cache_dir: the msb cache (default :func:`default_cache_dir`).

    Returns:
        The kernel, or ``None`` when none was fetched yet.
    """
    base = (cache_dir or default_cache_dir()) / "kernel"
    found: list[tuple[tuple[tuple[int, int | str], ...], Kernel]] = []
    for d in base.glob("debian-*"):
        kernel = _debian_kernel_from_dir(d)
        if kernel is not None:
            version = kernel.source.rpartition(" ")[2]
            found.append((_version_key(version), kernel))
    if not found:
        return None
    return max(found, key=lambda item: item[0])[1]


def _modules_dir(root: Path, release: str | None) -> Path:
    """Find ``lib/modules/<release>`` (or ``usr/lib/modules``) in an unpacked package."""
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if release and (base / release).is_dir():
            return base / release
        if not release and base.is_dir():
            dirs = [d for d in base.iterdir() if d.is_dir()]
            if len(dirs) == 1:
                return dirs[0]
    raise KernelFetchError(f"the kernel package has no lib/modules/{release or '*'} directory")


def _ensure_modules_dep(root: Path, moddir: Path) -> None:
    """Generate ``modules.dep`` with ``depmod -b`` (Debian ships it only after postinst)."""
    if (moddir / "modules.dep").is_file():
        return
    release = moddir.name
    if moddir.parent == root / "usr" / "lib" / "modules" and not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    depmod = shutil.which("depmod") or next(
        (p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.access(p, os.X_OK)), None
    )
    if depmod is None:
        raise KernelFetchError(
            "depmod is not installed (needed to resolve module dependencies)",
            hint="apt-get install kmod",
        )
    _run([depmod, "-b", str(root), release], what="resolving module dependencies")
    if not (moddir / "modules.dep").is_file():
        raise KernelFetchError(f"depmod did not write {moddir / 'modules.dep'}")


def _select_modules(moddir: Path) -> tuple[list[Path], list[str], list[str]]:
    """Pick the guest's modules and their dependencies from ``modules.dep``.

    Returns:
        ``(files in load order, requested names that are built in, optional names absent)``.

    Raises:
        KernelFetchError: a required module is neither built in nor a module.
    """
    paths: dict[str, Path] = {}
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        target, _, rest = line.partition(":")
        name = _module_name(Path(target).name)
        paths[name] = moddir / target
        deps[name] = [_module_name(Path(d).name) for d in rest.split()]
    builtin_file = moddir / "modules.builtin"
    builtin = (
        {_module_name(Path(x).name) for x in builtin_file.read_text().split()} if builtin_file.is_file() else set()
    )

    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in stack:
            raise KernelFetchError(f"module dependency cycle: {' -> '.join((*stack, name))}")
        for dep in deps.get(name, []):
            if dep not in paths:
                if dep in builtin:
                    continue
                raise KernelFetchError(f"module {name} needs {dep}, which modules.dep does not list")
            visit(dep, (*stack, name))
        done.add(name)
        order.append(name)

    built_in: list[str] = []
    absent: list[str] = []
    for name in _requested_modules():
        if name in builtin and name not in paths:
            built_in.append(name)
        elif name in paths:
            visit(name, ())
        elif name in DEBIAN_REQUIRED_MODULES:
            raise KernelFetchError(
                f"the Debian kernel has no {name} (neither built in nor a module)",
                hint="set MSB_KERNEL to a kernel with it built in, or run `make kernel`",
            )
        else:
            absent.append(name)
    return [paths[n] for n in order], built_in, absent


def _decompress_module(src: Path, dst: Path) -> None:
    """Copy a module to ``dst``, decompressing ``.ko.xz``/``.ko.gz``/``.ko.zst``."""
    if src.name.endswith(".ko"):
        shutil.copyfile(src, dst)
    elif src.name.endswith(".ko.xz"):
        dst.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.name.endswith(".ko.gz"):
        dst.write_bytes(gzip.decompress(src.read_bytes()))
    elif src.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise KernelFetchError(
                f"{src.name} is zstd-compressed and zstd is not installed", hint="apt-get install zstd"
            )
        _run([zstd, "-q", "-d", "-f", "-o", str(dst), str(src)], what="decompressing modules")
    else:
        raise KernelFetchError(f"unknown module file type: {src.name}")
    with open(dst, "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise KernelFetchError(f"{dst.name} is not an ELF file after decompression")


def _unpack_debian(deb: Path, root: Path, package: str, version: str, abi: str) -> None:
    """Unpack ``deb`` into ``root`` and write ``msb-modules/`` and ``modules.json`` there."""
    root.mkdir()
    _run(["dpkg-deb", "-x", str(deb), str(root)], what="unpacking the kernel package")
    moddir = _modules_dir(root, abi)
    release = moddir.name
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.is_file():
        raise KernelFetchError(f"{package} has no boot/vmlinuz-{release}")
    config = root / "boot" / f"config-{release}"
    vmlinux = root / "vmlinux"
    has_vmlinux = extract_pvh_vmlinux(vmlinuz, vmlinux)
    _ensure_modules_dep(root, moddir)
    files, built_in, absent = _select_modules(moddir)

    out = root / "msb-modules"
    out.mkdir()
    entries: list[_ModuleEntry] = []
    for src in files:
        name = _module_name(src.name)
        file = src.name.split(".ko", 1)[0] + ".ko"
        if (out / file).exists():
            raise KernelFetchError(f"two selected modules share the file name {file}")
        _decompress_module(src, out / file)
        entries.append(
            _ModuleEntry(name=name, file=file, source=str(src.relative_to(root)), sha256=_sha256(out / file))
        )
    meta = _ModulesJson(
        format=MODULES_JSON_FORMAT,
        package=package,
        package_version=version,
        deb_sha256=_sha256(deb),
        release=release,
        vmlinuz=str(vmlinuz.relative_to(root)),
        vmlinux="vmlinux" if has_vmlinux else None,
        config=str(config.relative_to(root)) if config.is_file() else None,
        requested=_requested_modules(),
        modules=entries,
        builtin=built_in,
        absent=absent,
    )
    (root / "modules.json").write_text(meta.model_dump_json(indent=2) + "\n")


def fetch_debian_kernel(cache_dir: Path) -> Kernel:
    """Download and unpack the newest Debian cloud kernel (a fast no-op when cached).

    Resolves ``linux-image-<abi>-cloud-amd64`` from the ``linux-image-cloud-amd64``
    metapackage's ``Depends`` (apt's candidate), fetches it with ``apt-get download``,
    checks its size and SHA256 against ``apt-cache show``, unpacks it with ``dpkg-deb -x``
    into a temporary directory, selects the guest's modules with their dependencies
    (``modules.dep``, generated with ``depmod`` because the package ships none),
    decompresses them into ``msb-modules/``, writes ``modules.json``, and renames the
    directory to ``kernel/debian-<abi>/``. Concurrent callers are serialised with a lock.

    Args:
        cache_dir: the msb cache directory.

    Returns:
        The Debian kernel with its modules in load order.

    Raises:
        KernelFetchError: apt/dpkg are missing, the package is unknown, or unpacking failed.
        KernelIntegrityError: the download does not match the archive's checksum.
    """
    base = cache_dir / "kernel"
    package, version, abi = _resolve_debian_package()
    target = base / f"debian-{abi}"
    kernel = _debian_kernel_from_dir(target, version)
    if kernel is not None:
        return kernel

    with _locked(base / ".debian.lock"):
        kernel = _debian_kernel_from_dir(target, version)  # another process may have won
        if kernel is not None:
            return kernel
        record = _archive_record(package, version)
        work = Path(tempfile.mkdtemp(prefix=".debian-tmp-", dir=base))
        try:
            deb = _download_deb(package, version, record, work)
            root = work / "root"
            _unpack_debian(deb, root, package, version, abi)
            deb.unlink()
            if target.exists():  # stale: older package revision with the same ABI, or partial
                target.rename(work / "old")
            root.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    kernel = _debian_kernel_from_dir(target, version)
    if kernel is None:
        raise KernelFetchError(f"{target} is incomplete after unpacking")
    return kernel
