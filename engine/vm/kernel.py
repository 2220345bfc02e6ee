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

import contextlib
import fcntl
import gzip
import hashlib
import lzma
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import KernelError

__all__ = [
    "DEBIAN_META_PACKAGE",
    "DEBIAN_OPTIONAL_MODULES",
    "DEBIAN_REQUIRED_MODULES",
    "Kernel",
    "KernelFetchError",
    "KernelIntegrityError",
    "KernelKind",
    "KernelNotFoundError",
    "custom_kernel",
    "default_cache_dir",
    "extract_pvh_vmlinux",
    "fetch_debian_kernel",
    "is_pvh_elf",
    "load_cached_debian_kernel",
    "load_minimal_kernel",
    "read_bzimage_version",
    "resolve_kernel",
]

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
"""Modules loaded when the package has them (vsock is an alternative host channel)."""

QEMU_LAPIC_TIMER_KHZ = 1_000_000
"""QEMU's emulated local APIC timer input clock (1 GHz), for ``lapic_timer_khz=``."""

MODULES_JSON_FORMAT = 2
_AUTO_ORDER: tuple[Literal["minimal", "debian"], ...] = ("minimal", "debian")
"""Automatic choice, fastest first: the minimal kernel reaches init in well under half the
time of Debian's cloud kernel under TCG (docs/kernels.md)."""

_HINT_NO_KERNEL = (
    "run `make kernel` (builds the fast minimal kernel, ~5 min) or `make setup` "
    "(fetches Debian's cloud kernel), or set MSB_KERNEL=/path/to/bzImage"
)


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


def _run(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run a host tool with the C locale; return stdout.

    Raises:
        KernelFetchError: the tool is missing or failed (stderr tail in the message).
    """
    env = dict(os.environ, LC_ALL="C", LANG="C")
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError as exc:
        raise KernelFetchError(
            f"{what}: `{argv[0]}` is not installed",
            hint="Debian's kernel is fetched with apt on Debian/Ubuntu hosts; elsewhere "
            "run `make kernel` or set MSB_KERNEL=/path/to/bzImage",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelFetchError(f"{what}: `{' '.join(argv)}` timed out") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise KernelFetchError(f"{what}: `{' '.join(argv)}` failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _deb822(text: str) -> list[dict[str, str]]:
    """Parse ``apt-cache show`` output into records (continuation lines are joined)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        records.append(current)
    return records


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (serialises fetches across processes)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _resolve_debian_package() -> tuple[str, str, str]:
    """Ask apt for the newest cloud kernel: ``(package, version, abi)``.

    Raises:
        KernelFetchError: apt does not know the metapackage or its dependency.
    """
    hint = "run `apt-get update`; the host needs Debian's main archive in its apt sources"
    out = _run(["apt-cache", "show", "--no-all-versions", DEBIAN_META_PACKAGE], what="resolving the kernel")
    records = _deb822(out)
    if not records or "Depends" not in records[0]:
        raise KernelFetchError(f"apt-cache knows no {DEBIAN_META_PACKAGE}", hint=hint)
    for alternative in records[0]["Depends"].split(","):
        first = alternative.split("|")[0].strip()
        m = re.fullmatch(r"(linux-image-(\S+)-cloud-amd64)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", first)
        if m:
            package, abi, version = m.group(1), m.group(2), m.group(3)
            break
    else:
        raise KernelFetchError(
            f"{DEBIAN_META_PACKAGE} depends on no linux-image-*-cloud-amd64: {records[0]['Depends']!r}",
            hint=hint,
        )
    if version is None:
        cand = _deb822(_run(["apt-cache", "show", "--no-all-versions", package], what="resolving the kernel"))
        if not cand or "Version" not in cand[0]:
            raise KernelFetchError(f"apt-cache has no candidate for {package}", hint=hint)
        version = cand[0]["Version"]
    return package, version, f"{abi}-cloud-amd64"


def _archive_record(package: str, version: str) -> dict[str, str]:
    """The archive's record (``SHA256``, ``Size``) for one package version."""
    out = _run(["apt-cache", "show", f"{package}={version}"], what="reading the package record")
    for record in _deb822(out):
        if record.get("Package") == package and record.get("Version") == version and "SHA256" in record:
            return record
    raise KernelFetchError(
        f"apt-cache show {package}={version} has no SHA256 field",
        hint="run `apt-get update`",
    )


def _download_deb(package: str, version: str, record: dict[str, str], dest: Path) -> Path:
    """``apt-get download`` one package into ``dest`` and check it against ``record``.

    apt itself verifies the file against the archive's index, whose ``Release`` file is
    signed by the Debian archive key (the ``Packages`` hash chain); the SHA256 compared here
    is the same index entry, checked again so a bypassed or misconfigured apt cannot hand us
    another file.
    """
    download_dir = dest
    tmp_owned: Path | None = None
    if os.geteuid() == 0:
        # apt drops to the `_apt` user to download; it needs a directory it can write, and
        # the cache usually sits under /root (0700). Download into /tmp instead.
        try:
            apt_user = pwd.getpwnam("_apt")
        except KeyError:
            apt_user = None
        if apt_user is not None:
            tmp_owned = Path(tempfile.mkdtemp(prefix="msb-kernel-dl-"))
            os.chown(tmp_owned, apt_user.pw_uid, -1)
            download_dir = tmp_owned
    try:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=download_dir, what="downloading the kernel")
        debs = sorted(download_dir.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise KernelFetchError(f"apt-get download left {len(debs)} files for {package} in {download_dir}")
        # move out of the _apt-writable directory first, then check what we will unpack
        deb = dest / debs[0].name
        if debs[0] != deb:
            shutil.copyfile(debs[0], deb)
        want_size = int(record.get("Size", "-1"))
        if want_size >= 0 and deb.stat().st_size != want_size:
            raise KernelIntegrityError(
                f"{deb.name}: size {deb.stat().st_size} != {want_size} from the archive index",
                hint="run `apt-get update` and try again; if it persists, check the mirror",
            )
        got = _sha256(deb)
        if got != record["SHA256"].lower():
            raise KernelIntegrityError(
                f"{deb.name}: SHA256 {got} does not match the archive index ({record['SHA256']})",
                hint="run `apt-get update` and try again; if it persists, check the mirror",
            )
        return deb
    finally:
        if tmp_owned is not None:
            shutil.rmtree(tmp_owned, ignore_errors=True)


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


if __name__ == "__main__":
    sys.exit(main())
