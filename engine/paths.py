"""Where msb keeps things on the host.

- cache (``MSB_CACHE_DIR``, default ``~/.cache/msb``): kernels, agent, initramfs, root images
  — all rebuildable.
- state (``MSB_STORAGE_PATH``, default ``~/.msb``): what must survive — persistent sandboxes'
  writable layers, server key, namespaces.
- runtime: per-VM sockets and console logs, in a private temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """The cache directory (created)."""
    d = Path(os.environ.get("MSB_CACHE_DIR") or Path.home() / ".cache" / "msb")
    d.mkdir(parents=True, exist_ok=True)
    return d


def state_dir() -> Path:
    """The state directory (created, mode 0700)."""
    d = Path(os.environ.get("MSB_STORAGE_PATH") or Path.home() / ".msb")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def agent_path() -> Path:
    """The guest agent binary (``MSB_AGENT`` overrides)."""
    env = os.environ.get("MSB_AGENT")
    return Path(env) if env else cache_dir() / "agent" / "msb-agent"


def netfilter_path() -> Path:
    """The network filter loaded into QEMU for ``public`` sandboxes (``MSB_NETFILTER`` overrides)."""
    env = os.environ.get("MSB_NETFILTER")
    return Path(env) if env else cache_dir() / "netfilter" / "msb-netfilter.so"


def runtime_dir() -> Path:
    """Where run directories go: ``XDG_RUNTIME_DIR``, else the temporary directory."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())


def new_run_dir(name: str, base: Path | None = None) -> Path:
    """A fresh private directory for one VM's sockets and console (short path: unix sockets
    are limited to 107 bytes).

    Args:
        name: the VM's name (its first 16 characters name the directory).
        base: the directory to make it in (a server's own, so that its next start finds what a
            crash left: engine/server/reclaim.py); default :func:`runtime_dir`.
    """
    return Path(tempfile.mkdtemp(prefix=f"msb-{name[:16]}-", dir=base or runtime_dir()))
