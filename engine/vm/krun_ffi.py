"""A cffi (ABI mode) binding to the parts of libkrun's C API the engine needs.

libkrun is found on the system, never vendored: ``MSB_LIBKRUN`` (a path) overrides, else
``ctypes.util.find_library("krun")`` (ldconfig's cache), else a few common install paths.
Every call's ``int32_t`` result is checked: libkrun returns ``-errno`` on failure, and each
failure becomes a :class:`~engine.errors.VmError` that names the call and the errno text.

Signatures follow ``include/libkrun.h`` of containers/libkrun (1.x). ABI mode means no C
compiler is needed at install time; a wrong declaration here would be an ABI bug, which is
why tests/unit/vm/test_krun_abi.py checks every argument through a C stand-in library.
"""

from __future__ import annotations

import ctypes.util
import errno as errno_mod
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cffi

from engine.errors import VmError

CDEF = """
int32_t krun_set_log_level(uint32_t level);
int32_t krun_create_ctx(void);
int32_t krun_free_ctx(uint32_t ctx_id);
int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib);
int32_t krun_set_root(uint32_t ctx_id, const char *root_path);
int32_t krun_add_virtiofs(uint32_t ctx_id, const char *c_tag, const char *c_path);
int32_t krun_disable_implicit_vsock(uint32_t ctx_id);
int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features);
int32_t krun_add_vsock_port(uint32_t ctx_id, uint32_t port, const char *c_filepath);
int32_t krun_set_port_map(uint32_t ctx_id, const char *const port_map[]);
int32_t krun_set_rlimits(uint32_t ctx_id, const char *const rlimits[]);
int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path);
int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path,
                      const char *const argv[], const char *const envp[]);
int32_t krun_start_enter(uint32_t ctx_id);
"""

COMMON_PATHS = (
    "/usr/lib64/libkrun.so.1",
    "/usr/lib/x86_64-linux-gnu/libkrun.so.1",
    "/usr/lib/aarch64-linux-gnu/libkrun.so.1",
    "/usr/local/lib64/libkrun.so.1",
    "/usr/local/lib/libkrun.so.1",
    "/usr/lib/libkrun.so.1",
)
"""Where distributions and ``make install`` put libkrun, tried after ldconfig's cache."""
KRUN_TSI_HIJACK_INET = 1 << 0
"""``krun_add_vsock`` feature: the guest's IPv4/IPv6 sockets become sockets of the VMM (TSI)."""
MIN_VERSION = "1.17"
"""The first libkrun with ``krun_add_vsock`` (TSI chosen per VM, enforced in the VMM)."""

_INSTALL_HINT = (
    "install libkrun (e.g. dnf install libkrun, or build containers/libkrun), or point MSB_LIBKRUN at libkrun.so"
)

_ffi = cffi.FFI()
_ffi.cdef(CDEF)


def find_libkrun() -> str:
    """Return the libkrun to load: a path, or a soname ``dlopen`` resolves.

    Raises:
        VmError: ``MSB_LIBKRUN`` names a file that does not exist, or no libkrun is installed.
    """
    override = os.environ.get("MSB_LIBKRUN")
    if override:
        if not Path(override).is_file():
            raise VmError(f"MSB_LIBKRUN={override} does not exist", hint=_INSTALL_HINT)
        return override
    found = ctypes.util.find_library("krun")
    if found:
        return found
    for path in COMMON_PATHS:
        if Path(path).is_file():
            return path
    raise VmError("libkrun not found (not in the ldconfig cache nor in the usual library paths)", hint=_INSTALL_HINT)


def library_version(path: str) -> str | None:
    """The version in a library's resolved file name (``libkrun.so.1.17.4`` → ``1.17.4``):
    libkrun has no call that reports it. ``path`` is a path or a soname (looked up in
    ldconfig's cache, without loading the library)."""
    if "/" not in path:
        try:
            out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        hits = [ln.rsplit("=> ", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith(path + " ")]
        if not hits:
            return None
        path = hits[0]
    _, sep, version = os.path.basename(os.path.realpath(path)).partition(".so.")
    return version if sep and version else None


def krun_error(call: str, rc: int) -> VmError:
    """The error for a failed libkrun call that returned ``rc`` (``-errno``)."""
    err = -rc
    name = errno_mod.errorcode.get(err, str(err))
    return VmError(
        f"libkrun {call} failed: {os.strerror(err)} ({name})",
        hint="libkrun's own log says more: set MSB_KRUN_LOG=4 (it goes to the sandbox's console log)",
    )


class KrunLib:
    """A loaded libkrun; every method checks the C return value."""

    def __init__(self, path: str | None = None) -> None:
        """Load libkrun.

        Args:
            path: the library to load; ``None`` = :func:`find_libkrun`.

        Raises:
            VmError: no libkrun, or the dynamic loader refused it.
        """
        self.path = path or find_libkrun()
        try:
            self._lib: Any = _ffi.dlopen(self.path)
        except OSError as e:
            raise VmError(f"cannot load libkrun from {self.path}: {e}", hint=_INSTALL_HINT) from e

    def call(self, name: str, *args: Any) -> int:
        """Call the libkrun function ``name``; return its non-negative result.

        Raises:
            VmError: the library lacks the symbol (too old), or the call returned ``-errno``.
        """
        try:
            fn = getattr(self._lib, name)
        except AttributeError as e:  # cffi resolves symbols lazily, on first access
            raise VmError(f"{self.path} has no {name}", hint=f"install libkrun {MIN_VERSION} or later") from e
        rc = int(fn(*args))
        if rc < 0:
            raise krun_error(name, rc)
        return rc

    def set_log_level(self, level: int) -> None:
        """Set libkrun's log level (0 off … 5 trace; the log goes to stderr)."""
        self.call("krun_set_log_level", level)

    def create_ctx(self) -> KrunContext:
        """Create a configuration context.

        Raises:
            VmError: libkrun refused.
        """
        return KrunContext(self, self.call("krun_create_ctx"))


class KrunContext:
    """One libkrun configuration context: typed setters, then :meth:`start_enter`."""

    def __init__(self, lib: KrunLib, ctx_id: int) -> None:
        self.lib = lib
        self.ctx_id = ctx_id
        self._freed = False
        # libkrun copies the strings, but the char* arrays stay referenced until free() anyway:
        # a cdata that is garbage-collected while C still holds its pointer is a use-after-free.
        self._keep: list[Any] = []

    def _str(self, s: str) -> Any:
        buf = _ffi.new("char[]", os.fsencode(s))
        self._keep.append(buf)
        return buf

    def _strv(self, items: Sequence[str]) -> Any:
        """A NULL-terminated ``char *[]`` (an empty list is ``{NULL}``, not NULL: see set_port_map)."""
        bufs = [self._str(s) for s in items]
        arr = _ffi.new("char *[]", [*bufs, _ffi.NULL])
        self._keep.append(arr)
        return arr

    def set_vm_config(self, cpus: int, ram_mib: int) -> None:
        """Set the number of vCPUs (1–255: a ``uint8_t``) and guest RAM in MiB."""
        if not 1 <= cpus <= 255:
            raise VmError(f"libkrun supports 1 to 255 vCPUs, not {cpus}")
        self.lib.call("krun_set_vm_config", self.ctx_id, cpus, ram_mib)

    def set_root(self, root_dir: str) -> None:
        """Use the host directory ``root_dir`` as the guest's root (shared over virtio-fs)."""
        self.lib.call("krun_set_root", self.ctx_id, self._str(root_dir))

    def add_virtiofs(self, tag: str, host_dir: str) -> None:
        """Share ``host_dir`` with the guest as a virtio-fs device with mount tag ``tag``."""
        self.lib.call("krun_add_virtiofs", self.ctx_id, self._str(tag), self._str(host_dir))

    def disable_implicit_vsock(self) -> None:
        """Drop the vsock device libkrun adds by itself (whose TSI follows heuristics), so
        :meth:`add_vsock` decides what the guest's sockets reach."""
        self.lib.call("krun_disable_implicit_vsock", self.ctx_id)

    def add_vsock(self, tsi_features: int) -> None:
        """Add the vsock device with exactly ``tsi_features`` (0: no TSI — libkrun's VMM then
        refuses the guest's socket proxies; :data:`KRUN_TSI_HIJACK_INET`: IP sockets)."""
        self.lib.call("krun_add_vsock", self.ctx_id, tsi_features)

    def add_vsock_port(self, port: int, socket_path: str) -> None:
        """Connect guest vsock ``port`` to the host unix socket ``socket_path`` (listened on by us)."""
        self.lib.call("krun_add_vsock_port", self.ctx_id, port, self._str(socket_path))

    def set_port_map(self, ports: Sequence[str]) -> None:
        """Publish guest TCP ports: ``"host:guest"`` entries. An empty list publishes nothing
        (libkrun reads a NULL array as "publish every listening port", which we never pass)."""
        self.lib.call("krun_set_port_map", self.ctx_id, self._strv(ports))

    def set_rlimits(self, rlimits: Sequence[str]) -> None:
        """Set guest rlimits: ``"RESOURCE=CUR:MAX"`` entries, RESOURCE a number (RLIMIT_*)."""
        self.lib.call("krun_set_rlimits", self.ctx_id, self._strv(rlimits))

    def set_workdir(self, path: str) -> None:
        """Set the working directory of the guest program (relative to the root)."""
        self.lib.call("krun_set_workdir", self.ctx_id, self._str(path))

    def set_exec(self, path: str, args: Sequence[str], env: Sequence[str]) -> None:
        """Set the guest program, its arguments (without argv[0]) and its whole environment
        (``KEY=VALUE``; never NULL, which would leak the host's environment into the guest)."""
        self.lib.call("krun_set_exec", self.ctx_id, self._str(path), self._strv(args), self._strv(env))

    def start_enter(self) -> None:
        """Start the VM in *this* process. On success it never returns: the process becomes the
        VMM and exits with the guest. Call it only in a child process (engine.vm.krun_child).

        Raises:
            VmError: libkrun could not start the VM (for example no usable /dev/kvm).
        """
        self.lib.call("krun_start_enter", self.ctx_id)

    def free(self) -> None:
        """Free the context. Safe to call twice."""
        if self._freed:
            return
        self._freed = True
        self.lib.call("krun_free_ctx", self.ctx_id)
        self._keep.clear()
