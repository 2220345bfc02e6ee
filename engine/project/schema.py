"""The Sandboxfile's schema: one pydantic model per sandbox entry, with strict field checks
whose messages say what a value must be (docs/sandboxfile.md lists them all).

The checks see the raw YAML value (``mode="before"``), so ``memory: "512"`` is refused rather
than quietly coerced. Each failure is a ``PydanticCustomError`` carrying the user-facing
``detail``, a ``hint`` and, for list items and script names, which item was wrong; the loader
in :mod:`engine.project.sandboxfile` turns it into a ``ConfigError`` with file:line:col.

The string syntaxes (``host:guest[:ro]``, ``[ip:]host:guest[/proto]``, ``K=V``) are parsed
here once, for both the file check and :mod:`engine.project.specs`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
"""Sandbox names (the server's rule too): 1–63 of ``[A-Za-z0-9_-]``, first alphanumeric."""
SCOPES = ("none", "group", "public", "any")
BACKENDS = ("auto", "qemu", "gvisor", "krun")
"""``backend:`` values: ``auto`` and :data:`engine.vm.select.BACKEND_NAMES` (a test keeps them equal)."""
KNOWN_TOP_KEYS = ("sandboxes", "meta", "modules", "builds", "groups")
"""Top-level keys msb knows; all but ``sandboxes`` are kept verbatim and not interpreted."""
MAX_MEMORY_MIB = 1 << 20
MAX_CPUS = 64
_PORT_RE = re.compile(r"[0-9]{1,5}")


class SyntaxProblem(ValueError):
    """A volume/port/env string does not parse; ``detail`` says what it must look like."""

    def __init__(self, detail: str, hint: str) -> None:
        self.detail = detail
        self.hint = hint
        super().__init__(detail)


def split_volume(text: str) -> tuple[str, str, bool]:
    """``"host:guest[:ro|:rw]"`` → ``(host, guest, readonly)`` (paths not checked on disk).

    Raises:
        SyntaxProblem: wrong shape, empty host, or a guest path that is not absolute.
    """
    parts = text.split(":")
    mode = parts.pop() if len(parts) == 3 else "rw"
    if len(parts) != 2 or mode not in ("ro", "rw") or not parts[0]:
        raise SyntaxProblem(f'must be "host:guest" with an optional ":ro" or ":rw" (got {text!r})',
                            'write e.g. "./data:/data" or "./src:/app/src:ro"')  # fmt: skip
    host, guest = parts
    if not guest.startswith("/") or not guest.rstrip("/") or ".." in guest.split("/") or "\x00" in text:
        raise SyntaxProblem(f"guest path {guest!r} must be an absolute directory other than / (got {text!r})",
                            'write e.g. "./data:/data"')  # fmt: skip
    return host, guest, mode == "ro"


def split_port(text: str) -> tuple[str, int, int, str]:
    """``"[ip:]host:guest[/tcp|/udp]"`` → ``(host_ip, host_port, guest_port, protocol)``;
    the host address defaults to 127.0.0.1 (loopback only).

    Raises:
        SyntaxProblem: wrong shape, a port outside 1–65535, or a bad IP address.
    """
    shape = f'must be "host:guest" or "ip:host:guest" with an optional "/tcp" or "/udp" (got {text!r})'
    hint = 'write e.g. "8000:8000", "0.0.0.0:8080:80" or "5353:53/udp"'
    body, slash, proto = text.partition("/")
    if slash and proto not in ("tcp", "udp"):
        raise SyntaxProblem(shape, hint)
    pieces = body.split(":")
    ip_part = ":".join(pieces[:-2])
    if len(pieces) < 2 or (len(pieces) > 2 and not ip_part):
        raise SyntaxProblem(shape, hint)
    host_s, guest_s = pieces[-2:]
    if not _PORT_RE.fullmatch(host_s) or not _PORT_RE.fullmatch(guest_s):
        raise SyntaxProblem(shape, hint)
    host_port, guest_port = int(host_s), int(guest_s)
    if not (1 <= host_port <= 65535 and 1 <= guest_port <= 65535):
        raise SyntaxProblem(f"ports must be 1–65535 (got {text!r})", hint)
    ip = ip_part.strip("[]") if ip_part else "127.0.0.1"
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise SyntaxProblem(f"{ip_part!r} is not an IP address (got {text!r})", hint) from None
    return ip, host_port, guest_port, proto or "tcp"


def split_env(text: str) -> tuple[str, str]:
    """``"K=V"`` → ``(K, V)``.

    Raises:
        SyntaxProblem: no ``=``, an empty name, or a NUL byte.
    """
    key, sep, value = text.partition("=")
    if not sep or not key or "\x00" in text:
        raise SyntaxProblem(f'must be "NAME=value" (got {text!r})', 'write e.g. "DEBUG=false"')
    return key, value


def _fail(detail: str, hint: str, **where: Any) -> NoReturn:
    raise PydanticCustomError("sandboxfile", "{detail}", {"detail": detail, "hint": hint, **where})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _string_list(v: Any, what: str, hint: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list):
        _fail(f"must be a list of {what} (got {v!r})", hint)
    for i, item in enumerate(v):
        if not isinstance(item, str):
            _fail(f"must be a string (got {item!r})", hint, index=i)
    return [str(item) for item in v]


def _checked_items(v: Any, what: str, hint: str, check: Any) -> list[str]:
    items = _string_list(v, what, hint)
    for i, item in enumerate(items):
        try:
            check(item)
        except SyntaxProblem as exc:
            _fail(exc.detail, exc.hint, index=i)
    return items


class SandboxEntry(BaseModel):
    """One sandbox under ``sandboxes:``. ``None`` / empty means "the default" (see each field).

    Unknown keys are kept in ``model_extra`` (and in the file) and reported as warnings.
    """

    model_config = ConfigDict(extra="allow")

    image: str | None = None
    """OCI image reference, or a root filesystem directory (``./dir``, ``/dir``); required in a file."""
    memory: int | None = None
    """Guest RAM in MiB (default 512)."""
    cpus: int | None = None
    """Virtual CPUs (default 1)."""
    volumes: list[str] = Field(default_factory=list)
    """``"host:guest[:ro|:rw]"``; host paths relative to the Sandboxfile's directory."""
    ports: list[str] = Field(default_factory=list)
    """``"[ip:]host:guest[/tcp|/udp]"``; published on 127.0.0.1 unless an ip is given."""
    envs: list[str] = Field(default_factory=list)
    """``"K=V"``, on top of the image's Env."""
    depends_on: list[str] = Field(default_factory=list)
    """Sandboxes to start first (names defined in the same file)."""
    workdir: str | None = None
    """Absolute working directory in the guest (default: the image's WorkingDir)."""
    shell: str | None = None
    """Shell that runs scripts (default /bin/sh)."""
    scripts: dict[str, str] = Field(default_factory=dict)
    """Named shell snippets; ``start`` is the default command of ``msb run``."""
    scope: str | None = None
    """Network: none | group | public | any (default public)."""
    backend: str | None = None
    """What isolates it: auto | qemu | gvisor | krun (default ``MSB_BACKEND``, else auto);
    ``msb run --backend`` overrides it."""
    host_ca: bool | None = None
    """``true``: share the host's CA bundle read-only and point SSL_CERT_FILE, PIP_CERT … at it
    (engine/sandbox/host_ca.py); for pip/npm behind a TLS-inspecting proxy. A server ignores it
    (its operator decides with ``--host-ca``)."""

    @field_validator("host_ca", mode="before")
    @classmethod
    def _host_ca(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, bool):  # a path here would let a file name a host file
            _fail(f"must be true or false (got {v!r})", "write host_ca: true (the bundle is MSB_HOST_CA, "
                  "else /etc/ssl/certs/ca-certificates.crt)")  # fmt: skip
        return v

    def unknown_keys(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    @field_validator("image", "shell", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not v.strip()):
            _fail(f"must be a non-empty string (got {v!r})", "e.g. image: microsandbox/python, shell: /bin/bash")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is not None and not (_is_int(v) and 64 <= v <= MAX_MEMORY_MIB):
            what = "an integer number of MiB" if not _is_int(v) else f"between 64 and {MAX_MEMORY_MIB} MiB"
            _fail(f"must be {what} (got {v!r})", "write e.g. memory: 1024 (MiB, no unit, no quotes)")
        return v

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, v: Any) -> Any:
        if v is not None and not (_is_int(v) and 1 <= v <= MAX_CPUS):
            _fail(f"must be an integer from 1 to {MAX_CPUS} (got {v!r})", "write e.g. cpus: 2")
        return v

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, v: Any) -> list[str]:
        return _checked_items(v, '"host:guest[:ro]" strings', 'e.g. volumes: ["./data:/data"]', split_volume)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> list[str]:
        return _checked_items(v, '"host:guest" strings', 'e.g. ports: ["8000:8000"]', split_port)

    @field_validator("envs", mode="before")
    @classmethod
    def _envs(cls, v: Any) -> list[str]:
        return _checked_items(v, '"K=V" strings', 'e.g. envs: ["DEBUG=false"]', split_env)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_on(cls, v: Any) -> list[str]:
        items = _string_list(v, "sandbox names", 'e.g. depends_on: ["db"]')
        for i, item in enumerate(items):
            if not NAME_RE.match(item):
                _fail(f"{item!r} is not a sandbox name", "names are 1–63 of [A-Za-z0-9_-]", index=i)
        return items

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not v.startswith("/")):
            _fail(f"must be an absolute path in the guest (got {v!r})", "write e.g. workdir: /app")
        return v

    @field_validator("scripts", mode="before")
    @classmethod
    def _scripts(cls, v: Any) -> dict[str, str]:
        hint = "write e.g. scripts: {start: python3 app.py}"
        if v is None:
            return {}
        if not isinstance(v, dict):
            _fail(f"must be a mapping of script name → shell command (got {v!r})", hint)
        for key, body in v.items():
            if not isinstance(key, str) or not key or "~" in key:
                _fail(f"script name {key!r} must be a non-empty string without '~'", hint, key=key, on_key=True)
            if not isinstance(body, str):
                _fail(f"must be a string (a shell command) (got {body!r})", f"quote it: {key}: \"{body}\"", key=key)
        return {str(k): str(b) for k, b in v.items()}

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, v: Any) -> Any:
        if v is not None and v not in SCOPES:
            _fail(f"must be one of {', '.join(SCOPES)} (got {v!r})",
                  "none = no network, public = internet but not the host's private ranges, any = all")  # fmt: skip
        return v

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> Any:
        if v is not None and v not in BACKENDS:
            _fail(f"must be one of {', '.join(BACKENDS)} (got {v!r})",
                  "auto = the strongest that works on the host; `msb doctor` shows which work there")  # fmt: skip
        return v
