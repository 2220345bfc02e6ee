"""Where the server keeps what it trusts, and where tenants' volumes live.

Layout under the state directory (``MSB_STORAGE_PATH``, default ``~/.msb``)::

    server.key                        the signing secret (0600)
    sandboxes/<ns>/<name>/            0700, never visible to any sandbox
        sandbox.json                  the definition (``sandbox.start``'s config), written by the server
        upper.ext4 | upper/           the persistent writable layer (QEMU | gVisor, libkrun)
    volumes/<ns>/                     0700: the namespace's data area; volume host paths are
                                      relative to it, and it holds nothing the server trusts

Only the writable layer inside ``sandboxes/<ns>/<name>/`` is written by a guest (through its
runtime), and host code only hands that directory to the backend: it never opens a path
inside it. Definitions are parsed from files nobody but the server writes.

microsandbox 0.2 (and msb before this layout) kept each namespace in ``namespaces/<ns>/``
with a ``Sandboxfile`` and ``.menv/`` *inside the directory that volumes were relative to*,
so a guest could rewrite its definitions or plant symlinks that root followed.
:func:`migrate_legacy` moves such a directory into this layout once (see its docstring).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from engine.errors import ConfigError, MsbError, VmError
from engine.project.schema import SandboxEntry
from engine.sandbox.spec import NAME_PATTERN
from engine.vm.safepath import open_beneath

log = logging.getLogger(__name__)
_NAME = re.compile(NAME_PATTERN)

DEFINITION = "sandbox.json"
MAX_DEFINITION_BYTES = 256 << 10
LEGACY_DIR = "namespaces"
TENANT_FIELDS = ("image", "memory", "cpus", "volumes", "ports", "envs", "workdir", "shell", "scripts")
"""What an API client may set (``sandbox.start``'s config); a definition holds nothing else."""


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700 directories, refusing a symlink at ``path``.

    Raises:
        ConfigError: ``path`` exists and is not a plain directory.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory (a symlink?)", hint="remove it; the server recreates it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class ServerState:
    """The server's state directory: definitions, persistent layers and volume areas."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.sandboxes = storage / "sandboxes"
        self.volumes = storage / "volumes"

    def sandbox_dir(self, namespace: str, name: str) -> Path:
        """``sandboxes/<ns>/<name>/`` (created, 0700): the persistent sandbox's own directory."""
        private_dir(self.storage)
        private_dir(self.sandboxes)
        private_dir(self.sandboxes / namespace)
        return private_dir(self.sandboxes / namespace / name)

    def volume_area(self, namespace: str) -> Path:
        """``volumes/<ns>/`` (created, 0700): what the namespace's volume host paths are relative to."""
        private_dir(self.storage)
        private_dir(self.volumes)
        return private_dir(self.volumes / namespace)

    def save(self, namespace: str, name: str, entry: SandboxEntry) -> None:
        """Write a definition atomically (a crash leaves the old one or the new one)."""
        d = self.sandbox_dir(namespace, name)
        doc = entry.model_dump(include=set(TENANT_FIELDS), exclude_defaults=True)
        tmp = d / f".{DEFINITION}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / DEFINITION)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves the old definition and no stray file
            raise

    def load(self, namespace: str, name: str) -> SandboxEntry | None:
        """A saved definition, or None. A file that does not parse is logged and ignored."""
        path = self.sandboxes / namespace / name / DEFINITION
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_DEFINITION_BYTES + 1)
        try:
            if len(data) > MAX_DEFINITION_BYTES:
                raise ValueError("too large")
            doc = json.loads(data)
            return SandboxEntry.model_validate({k: v for k, v in doc.items() if k in TENANT_FIELDS})
        except (ValueError, ValidationError, AttributeError) as exc:
            log.warning("ignoring the unreadable definition %s: %s", path, exc)
            return None

    def names(self, namespace: str | None = None) -> list[tuple[str, str]]:
        """``(namespace, name)`` of every saved definition, of one namespace or all."""
        out: list[tuple[str, str]] = []
        if not self.sandboxes.is_dir():
            return out
        spaces = [namespace] if namespace is not None else sorted(p.name for p in self.sandboxes.iterdir())
        for ns in spaces:
            d = self.sandboxes / ns
            if d.is_dir() and not d.is_symlink():
                out.extend((ns, p.name) for p in sorted(d.iterdir()) if (p / DEFINITION).is_file())
        return out


def migrate_legacy(state: ServerState) -> list[str]:
    """Move a state directory of the old layout (``namespaces/<ns>/Sandboxfile`` + ``.menv``)
    into :class:`ServerState`'s, once; returns what was refused, with the reason.

    For each namespace: every Sandboxfile entry becomes a ``sandbox.json`` holding only the
    fields an API client may set (a guest could have rewritten that file: ``scope: any`` or
    ``backend:`` are dropped, and volumes and images are checked again at every start);
    ``.menv/sandboxes/<name>/upper.ext4`` or ``upper/`` is renamed into the sandbox's own
    directory (same file system, nothing copied); everything else in the namespace directory
    (the data its volumes pointed at) becomes the namespace's volume area. A symlink where a
    layer, a namespace or the Sandboxfile should be is refused and left where it is; the old
    tree is renamed ``namespaces.migrated-<time>`` so this runs once.
    """
    legacy = state.storage / LEGACY_DIR
    if not legacy.is_dir() or legacy.is_symlink():
        return []
    refused: list[str] = []
    for ns_dir in sorted(legacy.iterdir()):
        refused += _migrate_namespace(state, ns_dir)
    done = state.storage / f"{LEGACY_DIR}.migrated-{time.strftime('%Y%m%dT%H%M%S')}"
    os.rename(legacy, done)
    _seal(done)
    for why in refused:
        log.warning("migration: refused %s", why)
    log.info("migrated the old state layout; what is left of it is in %s", done)
    return refused


def _seal(tree: Path) -> None:
    """Make what is left of the old layout private (0700 directories, no group/other bits on
    files) and drop its symlinks (refused layers), so nothing later follows them. Walks
    without following links."""
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o700)
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                os.unlink(path)
            elif not stat.S_ISDIR(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def _migrate_namespace(state: ServerState, ns_dir: Path) -> list[str]:
    ns = ns_dir.name
    if ns_dir.is_symlink() or not ns_dir.is_dir() or not valid_name(ns):
        return [f"{ns_dir}: not a plain directory with a valid namespace name"]
    refused: list[str] = []
    entries = _legacy_entries(ns_dir, refused)
    for name, entry in entries.items():
        if not valid_name(name):
            refused.append(f"{ns_dir}/Sandboxfile: sandbox name {name!r} is not valid")
            continue
        target = state.sandbox_dir(ns, name)
        layer_dir = ns_dir / ".menv" / "sandboxes" / name
        if _plain_dirs(ns_dir, ".menv", "sandboxes", name):
            refused += _move_layer(layer_dir, target)
        elif os.path.lexists(layer_dir):
            refused.append(f"{layer_dir}: a symlink or not a directory (its files were left where they are)")
        if entry.image is not None:
            state.save(ns, name, entry)
    area = state.volume_area(ns)
    for item in sorted(ns_dir.iterdir()):
        if item.name in ("Sandboxfile", ".menv"):
            continue
        os.rename(item, area / item.name)  # rename moves a symlink itself, never its target
    return refused


def valid_name(text: str) -> bool:
    """A namespace or sandbox name: 1-63 of ``[A-Za-z0-9_-]``, starting alphanumeric."""
    return bool(_NAME.match(text))


def _plain_dirs(base: Path, *parts: str) -> bool:
    """True if every component below ``base`` is a real directory (no symlink anywhere)."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(open_beneath(fd, "/".join(parts), os.O_PATH | os.O_DIRECTORY))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _move_layer(layer_dir: Path, target: Path) -> list[str]:
    refused = []
    for name, want_dir in (("upper.ext4", False), ("upper", True)):
        src = layer_dir / name
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue
        ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
        if not ok:
            refused.append(f"{src}: a symlink or the wrong kind of file, pointing outside (left where it is)")
            continue
        os.rename(src, target / name)
    return refused


def _legacy_entries(ns_dir: Path, refused: list[str]) -> dict[str, SandboxEntry]:
    from engine.project.sandboxfile import Sandboxfile

    path = ns_dir / "Sandboxfile"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_DEFINITION_BYTES:
        refused.append(f"{path}: a symlink, not a file, or too large")
        return {}
    try:
        sbf = Sandboxfile.load(path)
    except ConfigError as exc:
        refused.append(f"{path}: {exc}")
        return {}
    out = {}
    for name in sbf.names():
        entry = sbf.get(name)
        if entry is not None:
            out[name] = SandboxEntry.model_validate(entry.model_dump(include=set(TENANT_FIELDS), exclude_none=True))
    return out


class DiskFullError(MsbError):
    """The server's state directory has no space (or quota) left: ENOSPC, EDQUOT."""

    code = -32031


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_as_error(storage: Path) -> Iterator[None]:
    """Turn a full state disk, met anywhere inside (a definition, a layer's mkfs), into a
    :class:`DiskFullError` that names ENOSPC and what to do.

    Raises:
        DiskFullError: an ``OSError`` with ENOSPC/EDQUOT, or a ``VmError`` that says so (mkfs).
    """
    try:
        yield
    except (OSError, VmError) as exc:
        full = exc.errno in NO_SPACE if isinstance(exc, OSError) else "No space left on device" in str(exc)
        if not full:
            raise
        raise DiskFullError(f"the server's state disk is full (ENOSPC: no space left on device in {storage}); "
                            "nothing was saved", hint="free space there (stop and delete unused persistent sandboxes, "
                            "or grow the disk); sandboxes already running keep running") from exc  # fmt: skip
