"""Host CA trust: give a sandbox the host's CA bundle, read-only, and point TLS clients at it.

Behind a TLS-inspecting proxy ``pip install`` and ``npm install`` fail with "certificate verify
failed": the proxy's CA is in the host's trust store, not in the image's. With host CA trust on,
the bundle is copied once into a private, content-addressed directory (so the guest never sees
any other host file, and a later change of the host's file cannot reach a running sandbox),
that directory is shared with the guest as a **read-only volume** at :data:`GUEST_DIR` (a bind
mount under gVisor and libkrun, 9p with ``readonly`` under QEMU: the same mechanism on every
backend, enforced by the host side), and the usual variables (:data:`ENV_VARS`) name the file.

Who chooses the host file: the local CLI user (``msb exe --host-ca[=PATH]``, ``host_ca: true``
in a Sandboxfile, which always means :func:`default_bundle`) or the server's operator
(``msb server start --host-ca[=PATH]`` / ``MSB_HOST_CA``); never an API client.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from engine import paths
from engine.errors import ConfigError
from engine.sandbox.spec import SandboxSpec, VolumeMount

DEBIAN_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Debian's (and Ubuntu's) bundle of every CA the host trusts, ``update-ca-certificates``' output."""
GUEST_DIR = "/etc/msb-host-ca"
GUEST_FILE = f"{GUEST_DIR}/ca-certificates.crt"
ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
"""OpenSSL (Python's ssl, curl, wget …), requests, pip, Node.js (added to its own CAs), curl."""
MAX_BUNDLE_BYTES = 16 << 20
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def default_bundle() -> Path:
    """The host bundle ``host_ca: true`` and a bare ``--host-ca`` mean: ``MSB_HOST_CA`` if set, else Debian's."""
    return Path(os.environ.get("MSB_HOST_CA") or DEBIAN_BUNDLE)


def host_ca_env() -> dict[str, str]:
    """The variables that make TLS clients in the guest trust :data:`GUEST_FILE`."""
    return dict.fromkeys(ENV_VARS, GUEST_FILE)


def read_bundle(source: Path) -> bytes:
    """The bundle's bytes, checked to be certificates and nothing secret.

    Raises:
        ConfigError: missing or unreadable, not a regular file, over :data:`MAX_BUNDLE_BYTES`,
            no PEM certificate in it, or a private key in it (it would reach every sandbox).
    """
    hint = f"pass a PEM file of CA certificates, e.g. --host-ca={DEBIAN_BUNDLE}"
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the start
    except OSError as exc:
        raise ConfigError(f"cannot read the host CA bundle {source}: {exc.strerror}", hint=hint) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"host CA bundle {source} is not a regular file", hint=hint)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BUNDLE_BYTES + 1)
    if len(data) > MAX_BUNDLE_BYTES:
        raise ConfigError(f"host CA bundle {source} is over {MAX_BUNDLE_BYTES >> 20} MiB", hint=hint)
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"host CA bundle {source} holds a private key; refusing to share it with sandboxes",
                          hint=hint)  # fmt: skip
    if _PEM_CERT not in data:
        raise ConfigError(f"host CA bundle {source} holds no PEM certificate", hint=hint)
    return data


def stage_bundle(source: Path, stage_root: Path | None = None) -> Path:
    """Copy the bundle into ``stage_root/<sha256>/`` (once per content) and return that directory.

    The directory holds only the bundle (0755 directory, 0644 file), written atomically.

    Raises:
        ConfigError: see :func:`read_bundle`.
    """
    data = read_bundle(source)
    root = stage_root or paths.cache_dir() / "host-ca"
    final = root / hashlib.sha256(data).hexdigest()[:32]
    if (final / "ca-certificates.crt").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".stage.", dir=root))
    (work / "ca-certificates.crt").write_bytes(data)
    (work / "ca-certificates.crt").chmod(0o644)
    work.chmod(0o755)
    try:
        os.rename(work, final)
    except OSError:  # another start staged the same content first
        (work / "ca-certificates.crt").unlink()
        work.rmdir()
    return final


def with_host_ca(spec: SandboxSpec, source: Path, stage_root: Path | None = None) -> SandboxSpec:
    """``spec`` with the bundle at ``source`` mounted read-only at :data:`GUEST_DIR` and
    :data:`ENV_VARS` set (a variable the spec already sets keeps its value).

    Raises:
        ConfigError: see :func:`read_bundle`; the spec already has a volume at :data:`GUEST_DIR`.
    """
    if any(v.guest.rstrip("/") == GUEST_DIR for v in spec.volumes):
        raise ConfigError(f"a volume is already mounted at {GUEST_DIR}, where the host CA bundle goes")
    mount = VolumeMount(host=stage_bundle(source, stage_root), guest=GUEST_DIR, readonly=True)
    return spec.model_copy(update={"volumes": (*spec.volumes, mount), "env": {**host_ca_env(), **spec.env}})
