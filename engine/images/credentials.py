"""Registry credentials: ``msb registry login`` and Docker's ``config.json``.

Looked up in order: msb's own file (``$MSB_STORAGE_PATH/registries.json``, mode 0600, written
by ``msb registry login``), then ``$DOCKER_CONFIG/config.json`` / ``~/.docker/config.json``
(inline ``auth`` entries and credential helpers, read with oras' config loader).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from pydantic import BaseModel

from engine import paths
from engine.errors import ConfigError
from engine.images.reference import DEFAULT_REGISTRY


class Credentials(BaseModel):
    username: str
    password: str
    source: str = "explicit"

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r}, source={self.source!r})"

    __str__ = __repr__


def _keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host == DEFAULT_REGISTRY:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    if host.startswith("localhost"):
        keys += _keys(host.replace("localhost", "127.0.0.1", 1))[:3]
    elif host.startswith("127.0.0.1"):
        keys += [host.replace("127.0.0.1", "localhost", 1)]
    return keys


def msb_auth_file() -> Path:
    return paths.state_dir() / "registries.json"


def docker_config_file() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _decode(entry: object, source: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, _, pw = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(username=user, password=pw, source=source)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str):
        return Credentials(username=username, password=password, source=source)
    return None


def _read(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="fix or delete the file") from exc
    return doc if isinstance(doc, dict) else {}


def lookup(host: str) -> Credentials | None:
    """Credentials for a registry host, or None (anonymous)."""
    for path, source in ((msb_auth_file(), "msb"), (docker_config_file(), "docker")):
        doc = _read(path)
        auths = doc.get("auths")
        if isinstance(auths, dict):
            for key in _keys(host):
                creds = _decode(auths.get(key), f"{source}:{path}")
                if creds:
                    return creds
        if source == "docker":
            creds = _from_helper(doc, host)
            if creds:
                return creds
    return None


def _from_helper(doc: dict[str, object], host: str) -> Credentials | None:
    helpers = doc.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    helper = helper or doc.get("credsStore")
    if not isinstance(helper, str) or not helper:
        return None
    from oras.auth.base import AuthBackend

    encoded = AuthBackend()._get_auth_from_creds_store(helper, host)
    if not encoded:
        return None
    user, _, pw = base64.b64decode(encoded).decode().partition(":")
    return Credentials(username=user, password=pw, source=f"docker-credential-{helper}")


def save(host: str, creds: Credentials) -> Path:
    """Store credentials for ``host`` in msb's file (0600)."""
    path = msb_auth_file()
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    assert isinstance(auths, dict)
    auths[host] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    _write_private(path, doc)
    return path


def forget(host: str) -> bool:
    """Remove ``host`` from msb's file. Returns whether it was there."""
    path = msb_auth_file()
    doc = _read(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict) or host not in auths:
        return False
    del auths[host]
    _write_private(path, doc)
    return True


def _write_private(path: Path, doc: dict[str, object]) -> None:
    """Replace ``path`` atomically with ``doc``, readable by its owner only."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)
