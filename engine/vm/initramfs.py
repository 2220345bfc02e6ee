"""Build the guest initramfs: the agent as ``/init`` plus the kernel modules it loads.

The archive is an uncompressed ``newc`` cpio written here (no ``cpio`` tool, no root needed
for the ``/dev/console`` node): uncompressed because unpacking is faster than inflating
under TCG (measured: docs/kernels.md). Archives are cached by the hash of their content.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

from engine.errors import AgentError

AGENT_SOURCES = Path(__file__).resolve().parent.parent / "guest" / "agent"
_DIRS = ["dev", "proc", "sys", "lower", "rw", "newroot", "lib", "lib/msb-modules"]


def _entry(
    out: io.BytesIO, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0
) -> None:
    fields = [
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0,
    ]  # fmt: skip
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + name.encode() + b"\0")
    out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def build_cpio(agent: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """Return the newc archive bytes.

    Args:
        agent: the static agent binary (becomes ``/init``).
        modules: ``(file name, content)`` of kernel modules in load order.
    """
    out = io.BytesIO()
    ino = iter(range(1, 1 << 30))
    for d in _DIRS:
        _entry(out, d, 0o040755, ino=next(ino))
    _entry(out, "dev/console", 0o020600, rdev=(5, 1), ino=next(ino))
    _entry(out, "init", 0o100755, agent, ino=next(ino))
    order = "".join(f"{name}\n" for name, _ in modules).encode()
    _entry(out, "lib/msb-modules/order", 0o100644, order, ino=next(ino))
    for name, data in modules:
        _entry(out, f"lib/msb-modules/{name}", 0o100644, data, ino=next(ino))
    _entry(out, "TRAILER!!!", 0, ino=0)
    return out.getvalue()


def ensure_initramfs(agent_path: Path, modules: list[Path], cache_dir: Path) -> Path:
    """Return a cached initramfs for this agent and module set, building it if needed.

    Raises:
        AgentError: the agent binary is missing (says how to build it).
    """
    try:
        agent = agent_path.read_bytes()
    except OSError as exc:
        raise AgentError(
            f"guest agent not found at {agent_path}",
            hint="build it with `make agent` (or `make setup`), or set MSB_AGENT",
        ) from exc
    mods = [(m.name, m.read_bytes()) for m in modules]
    h = hashlib.sha256(agent)
    for name, data in mods:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    target = cache_dir / "initramfs" / f"{h.hexdigest()[:24]}.cpio"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(build_cpio(agent, mods))
    os.replace(tmp, target)
    return target


def agent_source_version(src: Path = AGENT_SOURCES) -> str | None:
    """The version ``make agent`` compiles in: sha256 of the ``*.c`` then ``*.h`` files, sorted.

    Returns:
        16 hex digits, or ``None`` when the sources are not here (an installed package).
    """
    files = sorted(src.glob("*.c")) + sorted(src.glob("*.h"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_agent_current(agent_path: Path, src: Path = AGENT_SOURCES) -> None:
    """Refuse an agent binary built from other sources than the ones beside this module.

    A stale agent boots, but ignores boot parameters it does not know (volumes, network):
    failing here is clearer than a sandbox without the volumes it was promised.

    Raises:
        AgentError: the binary reports another version (the hint says to run `make agent`).
    """
    expected = agent_source_version(src)
    if expected is None or not agent_path.is_file():
        return  # nothing to compare with; a missing agent is reported by ensure_initramfs
    try:
        out = subprocess.run([str(agent_path), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    words = out.split()
    actual = words[1] if len(words) > 1 and words[0] == "msb-agent" else "unknown"
    if actual != expected:
        raise AgentError(
            f"the guest agent {agent_path} is version {actual}, but its sources ({src}) are version {expected}",
            hint="rebuild it with `make agent` (or `make setup`), or set MSB_AGENT to use a binary as it is",
        )
