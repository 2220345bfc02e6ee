"""Docker-style image references.

``python`` → ``docker.io/library/python:latest``; ``microsandbox/python`` →
``docker.io/microsandbox/python:latest``; ``ghcr.io/o/r:tag``; ``host:5000/r@sha256:…``.
The first path component is a registry when it contains ``.`` or ``:`` or is ``localhost``
(Docker's rule). Every part is validated against the distribution grammar so a typo gets a
clear error instead of a request to a strange URL.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

from engine.errors import ConfigError

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
    r"|^\[[0-9A-Fa-f:.]+\]$"
)


class ImageRef(BaseModel):
    """A parsed, normalised image reference."""

    model_config = ConfigDict(frozen=True)

    registry: str
    """Registry host[:port] as the user names it (``docker.io`` for Docker Hub)."""
    repository: str
    """Repository path, e.g. ``library/python``."""
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse and normalise ``text``.

        Raises:
            ConfigError: the reference is malformed (the message says which part).
        """
        raw = text.strip()
        if not raw:
            raise ConfigError("empty image reference", hint="name an image, e.g. `python:3.11` or `ghcr.io/org/app:1`")
        if len(raw) > 512:
            raise ConfigError("image reference longer than 512 characters")
        if "://" in raw:
            raise ConfigError(
                f"image reference {raw!r} has a URL scheme",
                hint="drop the scheme: `host:port/repo:tag` (plain HTTP is used for loopback registries)",
            )
        rest, digest = raw, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.match(digest):
                raise ConfigError(
                    f"bad digest {digest!r} in {raw!r}", hint="a digest looks like sha256: followed by 64 hex digits"
                )
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.match(tag):
                raise ConfigError(
                    f"bad tag {tag!r} in {raw!r}",
                    hint="tags are up to 128 of [A-Za-z0-9_.-] and do not start with . or -",
                )
        parts = rest.split("/")
        registry = DEFAULT_REGISTRY
        if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
            registry = parts.pop(0)
            _check_registry(registry, raw)
        if registry in ("index.docker.io", DOCKER_HUB_API):
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and len(parts) == 1:
            parts.insert(0, "library")
        for part in parts:
            if not _COMPONENT.match(part):
                hint = "repository names are lowercase" if part.lower() != part else (
                    "each path part is [a-z0-9] words joined by . _ __ or -"
                )
                raise ConfigError(f"bad repository part {part!r} in {raw!r}", hint=hint)
        repository = "/".join(parts)
        if len(repository) > 255:
            raise ConfigError(f"repository name in {raw!r} is longer than 255 characters")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host[:port] to talk to (Docker Hub's API lives on another name)."""
        return DOCKER_HUB_API if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost``/127.0.0.0/8/``[::1]`` registries (plain HTTP allowed)."""
        host = self.registry
        if host.startswith("["):
            host = host[1 : host.index("]")]
        elif ":" in host:
            host = host.rsplit(":", 1)[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def with_digest(self, digest: str) -> ImageRef:
        return self.model_copy(update={"digest": digest})

    def with_tag(self, tag: str) -> ImageRef:
        return self.model_copy(update={"tag": tag, "digest": None})

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def short(self) -> str:
        """How ``msb images`` shows it: Docker Hub's ``docker.io/library/`` left out."""
        s = str(self)
        for prefix in (f"{DEFAULT_REGISTRY}/library/", f"{DEFAULT_REGISTRY}/"):
            if s.startswith(prefix):
                return s[len(prefix) :]
        return s


def _check_registry(registry: str, raw: str) -> None:
    host, port = registry, None
    if registry.startswith("["):
        end = registry.find("]")
        host, rest = registry[: end + 1], registry[end + 1 :]
        port = rest[1:] if rest.startswith(":") else None
    elif ":" in registry:
        host, port = registry.rsplit(":", 1)
    if not _HOST.match(host) or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(f"bad registry {registry!r} in {raw!r}", hint="a registry is host or host:port")


def is_digest(text: str) -> bool:
    """True if ``text`` is a well-formed ``sha256:``/``sha512:`` digest."""
    return bool(_DIGEST.match(text))
