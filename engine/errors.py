"""The one error root of msb, and a subclass per area.

Every error a user can meet is an ``MsbError`` whose message says what happened *and* what to
do. Errors that cross the wire (JSON-RPC, MCP) carry a JSON-RPC ``code``; the server converts
them in one place.

Tree::

    MsbError                      -32000  anything msb raises on purpose
    ├── ConfigError               -32602  bad spec, Sandboxfile or argument
    ├── NotFoundError             -32602  no such sandbox / image / file
    ├── KernelError               -32001  guest kernel missing, corrupt or unfetchable
    ├── AgentError                -32002  guest agent binary missing or wrong version
    ├── VmError                   -32003  the VMM failed: QEMU missing, refused to start
    │   ├── AccelError            -32003  a forced accelerator does not work here
    │   ├── BootError             -32004  the guest did not become ready (console tail inside)
    │   └── VmCrashedError        -32005  the VM died while in use; the sandbox is crashed
    ├── ProtocolError             -32006  the guest sent a malformed or oversized frame
    ├── ExecError                 -32007  a command could not be started in the guest
    │   └── ExecTimeoutError      -32008  a command ran past its timeout and was killed
    ├── GuestFileError            -32009  a file operation failed in the guest (errno inside)
    ├── SandboxStateError         -32010  the sandbox is not in a state that allows this
    └── ImageError                -32011  an OCI image could not be pulled, read or built
        ├── HostileLayerError     -32011  a layer tried to write outside its root (rejected)
        └── RegistryError         -32012  the registry refused, failed or is unreachable
            └── AuthError         -32013  credentials missing or wrong for that registry
"""

from __future__ import annotations

__all__ = [
    "AccelError",
    "AgentError",
    "AuthError",
    "BootError",
    "ConfigError",
    "ExecError",
    "ExecTimeoutError",
    "GuestFileError",
    "HostileLayerError",
    "ImageError",
    "KernelError",
    "MsbError",
    "NotFoundError",
    "ProtocolError",
    "RegistryError",
    "SandboxStateError",
    "VmCrashedError",
    "VmError",
]


class MsbError(Exception):
    """Root of every error msb raises on purpose.

    Attributes:
        code: the JSON-RPC error code used when this error crosses the wire.
        hint: what the user can do about it (appended to the message).
    """

    code: int = -32000

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  hint: {hint}" if hint else message)


class ConfigError(MsbError):
    """A spec, Sandboxfile or argument is invalid."""

    code = -32602


class NotFoundError(MsbError):
    """A named sandbox, image or file does not exist."""

    code = -32602


class KernelError(MsbError):
    """The guest kernel is missing, corrupt or could not be fetched."""

    code = -32001


class AgentError(MsbError):
    """The guest agent binary is missing or speaks another protocol version."""

    code = -32002


class VmError(MsbError):
    """The virtual machine monitor failed."""

    code = -32003


class AccelError(VmError):
    """A forced accelerator (e.g. ``MSB_ACCEL=kvm``) does not work on this host."""


class _ConsoleVmError(VmError):
    """A VM error that shows the guest's last console lines under its message."""

    def __init__(self, message: str, *, hint: str | None = None, console_tail: str = "") -> None:
        self.console_tail = console_tail
        if console_tail:
            message = f"{message}\n--- guest console (last lines) ---\n{console_tail.rstrip()}"
        super().__init__(message, hint=hint)


class BootError(_ConsoleVmError):
    """The guest did not become ready; ``console_tail`` holds its last console lines."""

    code = -32004


class VmCrashedError(_ConsoleVmError):
    """The VM died while in use. The sandbox is marked crashed."""

    code = -32005


class ProtocolError(MsbError):
    """The guest broke the wire protocol. The host drops the VM."""

    code = -32006


class ExecError(MsbError):
    """A command could not be started in the guest."""

    code = -32007

    def __init__(self, message: str, *, hint: str | None = None, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(message, hint=hint)


class ExecTimeoutError(ExecError):
    """A command ran past its timeout; its whole process group was killed."""

    code = -32008


class GuestFileError(MsbError):
    """A file operation in the guest failed; ``errno`` is the guest's errno."""

    code = -32009

    def __init__(self, message: str, *, hint: str | None = None, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(message, hint=hint)


class SandboxStateError(MsbError):
    """The sandbox is not in a state that allows the operation."""

    code = -32010


class ImageError(MsbError):
    """An OCI image could not be pulled, read or built."""

    code = -32011


class HostileLayerError(ImageError):
    """A layer tar tried to escape its root (``..``, absolute paths, symlink or hardlink tricks,
    device nodes when unprivileged). Nothing outside the target directory was written."""


class RegistryError(ImageError):
    """A registry refused a request, failed, or could not be reached."""

    code = -32012


class AuthError(RegistryError):
    """The registry wants credentials we do not have, or rejected the ones we sent."""

    code = -32013
