"""API keys: ``"msb_" + HS256 JWT`` with claims ``{exp, iat, namespace}`` signed with the
server secret (CONTRACTS.md). The secret is 32 random alphanumerics in ``<state>/server.key``
(0600), made on the first non-dev start and kept across restarts."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import string
import time
from collections.abc import Mapping
from pathlib import Path

import jwt
from pydantic import BaseModel

from engine.errors import ConfigError, MsbError

PREFIX = "msb_"
MIN_STATIC_KEY = 16
STATIC_KEY_HINT = "a static key is a random string of your own, e.g. `openssl rand -hex 24`"
ALGORITHM = "HS256"
SECRET_FILE = "server.key"
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ApiAuthError(MsbError):
    """The request carries no valid API key (HTTP 401)."""

    code = -32020
    http_status = 401


class ForbiddenError(ApiAuthError):
    """The key is valid but not for this namespace (HTTP 403)."""

    code = -32021
    http_status = 403


class Claims(BaseModel):
    namespace: str
    exp: int
    iat: int


def parse_duration(text: str) -> int:
    """``30m``, ``24h``, ``7d``, ``2w`` → seconds.

    Raises:
        ConfigError: anything else.
    """
    m = _DURATION.match(text.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(f"bad duration {text!r}", hint="use a number and a unit: 30m, 24h, 7d, 2w")
    return int(m.group(1)) * _UNITS[m.group(2)]


def secret_path(storage: Path) -> Path:
    return storage / SECRET_FILE


def load_secret(storage: Path, *, create: bool) -> str | None:
    """The server secret from ``<storage>/server.key``; made (0600) if missing and ``create``."""
    path = secret_path(storage)
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    if not create:
        return None
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    alphabet = string.ascii_letters + string.digits
    secret = "".join(secrets.choice(alphabet) for _ in range(32))
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == 0:  # an older msb's write cut short by a full disk
            path.unlink()
    # whole or not at all: a full disk must not leave an empty or short key that breaks the
    # next start; link() keeps O_EXCL's meaning (a concurrent keygen's secret wins, and is read)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return secret


def make_key(secret: str, *, expire_s: int = 86400, namespace: str = "*", now: float | None = None) -> str:
    iat = int(now if now is not None else time.time())
    token = jwt.encode({"exp": iat + expire_s, "iat": iat, "namespace": namespace}, secret, algorithm=ALGORITHM)
    return PREFIX + token


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """``Authorization: Bearer <key>``, ``Proxy-Authorization``, or a bare key."""
    for name in ("authorization", "proxy-authorization"):
        value = headers.get(name)
        if value:
            value = value.strip()
            if value.lower().startswith("bearer "):
                value = value[7:].strip()
            return value or None
    return None


def verify(secret: str, token: str | None) -> Claims:
    """Check a key.

    Raises:
        ApiAuthError: missing, malformed, badly signed or expired (the message says which).
    """
    hint = "pass `Authorization: Bearer <key>`; make a key with `msb server keygen`"
    if not token:
        raise ApiAuthError("missing API key", hint=hint)
    if not token.startswith(PREFIX):
        raise ApiAuthError("malformed API key (it should start with msb_)", hint=hint)
    try:
        doc = jwt.decode(token[len(PREFIX):], secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat"]})
    except jwt.ExpiredSignatureError:
        raise ApiAuthError("API key expired", hint="make a new one with `msb server keygen --expire 7d`") from None
    except jwt.InvalidSignatureError:
        raise ApiAuthError("API key signature is invalid (made for another server secret?)", hint=hint) from None
    except jwt.PyJWTError as exc:
        raise ApiAuthError(f"malformed API key ({exc})", hint=hint) from None
    ns = doc.get("namespace", "*")
    if not isinstance(ns, str):
        raise ApiAuthError("malformed API key (namespace claim)", hint=hint)
    return Claims(namespace=ns, exp=int(doc["exp"]), iat=int(doc["iat"]))


def authenticate(secret: str, token: str | None, *, static_key: str | None = None) -> Claims:
    """Check a key: the operator's static key (``--api-key``, namespace ``*``) or a signed ``msb_`` key.

    An ``msb_`` value is never compared as a static key: it is verified by its signature, so its
    expiry and namespace apply however the operator passed it.

    Raises:
        ApiAuthError: as :func:`verify`.
    """
    if static_key and not static_key.startswith(PREFIX) and token and not token.startswith(PREFIX):
        # Digests first: compare_digest is constant-time only for equal lengths, so the key's length stays hidden.
        given, wanted = hashlib.sha256(token.encode()).digest(), hashlib.sha256(static_key.encode()).digest()
        if hmac.compare_digest(given, wanted):
            return Claims(namespace="*", exp=0, iat=0)
        raise ApiAuthError("API key is not this server's static key", hint="send the key given to --api-key")
    return verify(secret, token)


def check_static_key(static_key: str | None, secret: str | None, *, dev: bool) -> None:
    """Refuse a static key the server could not honour as asked (at start, before anything listens).

    Raises:
        ConfigError: a key with ``--dev`` (no auth at all), one shorter than :data:`MIN_STATIC_KEY`, or an
            ``msb_`` key this server's secret did not sign (a signed key only works through its signature).
    """
    if not static_key:
        return
    if dev:
        raise ConfigError("--dev turns authentication off, so an API key (--api-key / MSB_API_KEY) would be ignored",
                          hint="drop --dev to require the key, or drop the key (unset MSB_API_KEY)")  # fmt: skip
    if static_key.startswith(PREFIX):
        try:
            verify(secret or "", static_key)
        except ApiAuthError as exc:
            raise ConfigError(f"--api-key got an msb_ key this server does not accept ({exc.message})",
                              hint=f"msb_ keys come from `msb server keygen` with this server's secret; "
                                   f"{STATIC_KEY_HINT}") from None  # fmt: skip
        return
    if len(static_key) < MIN_STATIC_KEY:
        raise ConfigError(f"the API key (--api-key / MSB_API_KEY) is shorter than {MIN_STATIC_KEY} characters",
                          hint=STATIC_KEY_HINT)  # fmt: skip


def check_namespace(claims: Claims | None, namespace: str) -> None:
    """A key for ``ns`` may only touch ``ns`` (``*`` = any). ``None`` claims = dev mode."""
    if claims is None or claims.namespace in ("*", namespace):
        return
    raise ForbiddenError(f"this API key is for namespace {claims.namespace!r}, not {namespace!r}",
                         hint="use a key made with `msb server keygen --namespace " + namespace + "`")  # fmt: skip
