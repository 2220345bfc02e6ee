"""The registry seam: a small Protocol, the real client on ``oras``, and a fake beside it.

:class:`OrasRegistry` talks the distribution API through ``oras.provider.Registry`` (URLs,
sessions, the bearer-token flow, blob uploads). What we add on top:

- a request loop without oras' multi-second retry sleeps: transient failures (connection
  reset, 429, 5xx) are retried a few times quickly, everything else fails at once with an
  :class:`~engine.errors.RegistryError` that says what to do;
- both challenge schemes: ``Bearer`` (token servers: Docker Hub, GHCR, …) and ``Basic``
  (htpasswd registries);
- bounded reads of manifests, and blob downloads that stream into the store's verifying
  writer, resuming a partial file with a range request;
- plain HTTP only for loopback registries or ones named in ``MSB_INSECURE_REGISTRIES``.
- pulls API clients ask for run under a :class:`~engine.images.policy.PullPolicy`: no stored
  credentials unless allowed, no loopback/private addresses unless listed.

Every method is async; the blocking ``requests`` calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import oras.auth.utils
import oras.container
import oras.provider
import requests
import requests.adapters
from pydantic import BaseModel

from engine.errors import AuthError, ImageError, RegistryError
from engine.images import credentials
from engine.images.credentials import Credentials
from engine.images.oci import ACCEPT, MAX_MANIFEST_BYTES, Descriptor, digest_bytes
from engine.images.policy import PolicySession, PullPolicy
from engine.images.reference import ImageRef
from engine.images.store import BlobWriter

_CHUNK = 1 << 20
CHUNKED_UPLOAD_ABOVE = 32 << 20
TIMEOUT = (10.0, 120.0)

ByteProgress = Callable[[int], None]


class ManifestResponse(BaseModel):
    data: bytes
    media_type: str
    digest: str


class ImageRegistry(Protocol):
    """What the pull/push code needs from a registry."""

    async def get_manifest(self, ref: ImageRef, reference: str) -> ManifestResponse:
        """Fetch a manifest or index by tag or digest (bounded; digest checked when pinned)."""
        ...

    async def fetch_blob(self, ref: ImageRef, desc: Descriptor, writer: BlobWriter, on_bytes: ByteProgress) -> None:
        """Stream a blob into ``writer`` (which verifies on commit). Resumes at ``writer.offset``."""
        ...

    async def has_blob(self, ref: ImageRef, digest: str) -> bool: ...

    async def push_blob(self, ref: ImageRef, desc: Descriptor, path: Path, on_bytes: ByteProgress) -> None: ...

    async def push_manifest(self, ref: ImageRef, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest; returns its digest."""
        ...

    async def check_login(self, host: str) -> None:
        """Authenticate against ``host``'s ``/v2/`` (raises AuthError when refused)."""
        ...


def insecure_hosts() -> set[str]:
    return {h.strip() for h in os.environ.get("MSB_INSECURE_REGISTRIES", "").split(",") if h.strip()}


class _HostClient(oras.provider.Registry):  # type: ignore[misc]
    """One registry host: an oras Registry with msb's request loop and auth handling."""

    def __init__(self, host: str, *, plain_http: bool, creds: Credentials | None,
                 policy: PullPolicy | None = None) -> None:  # fmt: skip
        super().__init__(hostname=host, insecure=plain_http, tls_verify=True, auth_backend="token")
        if policy is not None:  # token requests share the session, so they are checked too
            self.session = self.auth.session = PolicySession(policy)
        else:
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.host = host
        self.creds = creds
        self._auth_header: dict[str, str] = {}
        self._lock = threading.Lock()
        if creds is not None:
            self.auth.set_basic_auth(creds.username, creds.password)

    # oras calls self.do_request for everything; this replaces its retrying version.
    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        headers = dict(headers or {})
        headers.pop("Authorization", None)
        authed = 0
        attempt = 0
        while True:
            with self._lock:
                auth = dict(self._auth_header)
            try:
                resp = self.session.request(
                    method, url, data=data, json=json, headers={**headers, **auth}, stream=stream,
                    timeout=TIMEOUT, verify=self._tls_verify,
                )  # fmt: skip
            except requests.exceptions.SSLError as exc:
                raise RegistryError(
                    f"TLS failed talking to {self.host}: {_short(exc)}",
                    hint=f"if {self.host} serves plain HTTP on a trusted network, add it to MSB_INSECURE_REGISTRIES",
                ) from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                attempt += 1
                replayable = data is None or isinstance(data, (bytes, bytearray))
                if attempt < 3 and replayable and not _is_dns_failure(exc):
                    time.sleep(0.2 * attempt)
                    continue
                raise RegistryError(
                    f"cannot reach registry {self.host}: {_conn_reason(exc)}",
                    hint="check the name and your network; images built with `msb image build` work offline",
                ) from exc
            if resp.status_code in (401, 403) and authed < 2:
                authed += 1
                if self._authenticate(resp, refresh=authed > 1 or resp.status_code == 403):
                    resp.close()
                    continue
            if resp.status_code == 401:
                resp.close()
                raise self._auth_error()
            if resp.status_code in (429, 502, 503, 504) and attempt < 3 and method in ("GET", "HEAD"):
                attempt += 1
                resp.close()
                time.sleep(0.5 * attempt)
                continue
            result: requests.Response = resp
            return result

    def _authenticate(self, resp: requests.Response, *, refresh: bool) -> bool:
        """Answer a challenge. True if a new Authorization header is worth a retry."""
        challenge = resp.headers.get("Www-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.creds is None:
                return False
            token = oras.auth.utils.get_basic_auth(self.creds.username, self.creds.password)
            header = {"Authorization": f"Basic {token}"}
            with self._lock:
                if self._auth_header == header:
                    return False  # the same credentials were already refused
                self._auth_header = header
            return True
        if scheme == "bearer":
            h = oras.auth.utils.parse_auth_header(challenge)
            if not h.realm:
                return False
            try:
                fetch = self.auth.request_token if self.creds is not None else self.auth.request_anonymous_token
                token = fetch(h)
            except requests.RequestException as exc:
                raise RegistryError(f"token server {h.realm} of {self.host} failed: {_short(exc)}") from exc
            if not token:
                return False
            header = {"Authorization": f"Bearer {token}"}
            with self._lock:
                if self._auth_header == header and not refresh:
                    return False
                self._auth_header = header
            return True
        return False

    def _auth_error(self) -> AuthError:
        if self.creds is None:
            return AuthError(
                f"registry {self.host} requires authentication",
                hint=f"log in with `msb registry login {self.host} -u USER` (or `docker login`), then retry",
            )
        return AuthError(
            f"registry {self.host} rejected the credentials of {self.creds.username!r} ({self.creds.source})",
            hint=f"check the password and run `msb registry login {self.host} -u USER` again",
        )

    def url(self, path: str) -> str:
        return f"{self.prefix}://{self.host}{path}"


def _is_dns_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "NameResolutionError" in text or "Name or service not known" in text or "Temporary failure in name" in text


def _conn_reason(exc: BaseException) -> str:
    text = str(exc)
    if _is_dns_failure(exc):
        return "its host name does not resolve (no network, or a typo)"
    if "Connection refused" in text:
        return "connection refused (nothing listens on that port)"
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text:
        return "timed out"
    if "Network is unreachable" in text:
        return "network unreachable"
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"


def _error_text(resp: requests.Response) -> str:
    try:
        doc = resp.json()
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            e = errors[0]
            return f"{e.get('code', '')}: {str(e.get('message', ''))[:200]}".strip(": ")
    except ValueError:
        pass
    return f"HTTP {resp.status_code} {resp.reason}"


class OrasRegistry:
    """The real registry client. One instance serves any number of hosts."""

    def __init__(
        self,
        *,
        creds: dict[str, Credentials] | None = None,
        insecure: set[str] | None = None,
        use_stored_credentials: bool = True,
        policy: PullPolicy | None = None,
    ) -> None:
        """Args:
        creds: credentials per registry host, used before any stored ones.
        insecure: hosts spoken to over plain HTTP (besides loopback and ``MSB_INSECURE_REGISTRIES``).
        use_stored_credentials: look up msb's auth file and Docker's config.
        policy: a pull an API client asked for (:mod:`engine.images.policy`): no stored
            credentials unless it allows them, no private addresses unless listed. None: the
            operator's own pull, unrestricted.
        """
        self._creds = dict(creds or {})
        self._insecure = (insecure or set()) | insecure_hosts()
        self._use_stored = use_stored_credentials and (policy is None or policy.use_credentials)
        self._policy = policy
        self._clients: dict[str, _HostClient] = {}
        self._lock = threading.Lock()

    def plain_http(self, ref_or_host: ImageRef | str) -> bool:
        ref = ref_or_host if isinstance(ref_or_host, ImageRef) else ImageRef.parse(f"{ref_or_host}/x")
        return ref.is_loopback or ref.registry in self._insecure

    def _client(self, ref: ImageRef) -> _HostClient:
        host = ref.api_host
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                creds = self._creds.get(ref.registry)
                if creds is None and self._use_stored:
                    creds = credentials.lookup(ref.registry)
                client = _HostClient(host, plain_http=self.plain_http(ref), creds=creds, policy=self._policy)
                self._clients[host] = client
            return client

    def _container(self, ref: ImageRef) -> oras.container.Container:
        return oras.container.Container(f"{ref.api_host}/{ref.repository}:{ref.tag or 'latest'}")

    # --- reads ---------------------------------------------------------------------------

    async def get_manifest(self, ref: ImageRef, reference: str) -> ManifestResponse:
        return await asyncio.to_thread(self._get_manifest, ref, reference)

    def _get_manifest(self, ref: ImageRef, reference: str) -> ManifestResponse:
        client = self._client(ref)
        url = client.url(f"/v2/{ref.repository}/manifests/{reference}")
        with client.do_request(url, "GET", headers={"Accept": ", ".join(ACCEPT)}, stream=True) as resp:
            if resp.status_code == 404:
                raise ImageError(
                    f"{ref.name}:{reference} not found on {ref.registry}" if ":" not in reference
                    else f"{ref.name}@{reference} not found on {ref.registry}",
                    hint="check the name and tag (`msb images` lists what is here)",
                )  # fmt: skip
            if resp.status_code != 200:
                raise RegistryError(f"{ref.registry} refused the manifest of {ref}: {_error_text(resp)}")
            data = _read_bounded(resp, MAX_MANIFEST_BYTES, "manifest")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = digest_bytes(data)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"the registry sent a manifest for {reference} that hashes to {digest}",
                             hint="the registry is broken or hostile")  # fmt: skip
        return ManifestResponse(data=data, media_type=media_type, digest=digest)

    async def has_blob(self, ref: ImageRef, digest: str) -> bool:
        def run() -> bool:
            client = self._client(ref)
            with client.do_request(client.url(f"/v2/{ref.repository}/blobs/{digest}"), "HEAD") as resp:
                return resp.status_code == 200

        return await asyncio.to_thread(run)

    async def fetch_blob(self, ref: ImageRef, desc: Descriptor, writer: BlobWriter, on_bytes: ByteProgress) -> None:
        await asyncio.to_thread(self._fetch_blob, ref, desc, writer, on_bytes)

    def _fetch_blob(self, ref: ImageRef, desc: Descriptor, writer: BlobWriter, on_bytes: ByteProgress) -> None:
        client = self._client(ref)
        url = client.url(f"/v2/{ref.repository}/blobs/{desc.digest}")
        headers = {"Range": f"bytes={writer.offset}-"} if 0 < writer.offset < desc.size else {}
        if writer.offset:
            on_bytes(writer.offset)
        with client.do_request(url, "GET", headers=headers, stream=True) as resp:
            if resp.status_code == 200 and writer.offset:
                on_bytes(-writer.offset)
                writer.restart()  # no range support: start over
            elif resp.status_code == 416 and writer.offset == desc.size:
                return
            elif resp.status_code not in (200, 206):
                if resp.status_code == 404:
                    raise ImageError(f"blob {desc.digest} of {ref} is missing on {ref.registry}")
                raise RegistryError(f"{ref.registry} failed to send blob {desc.digest[:19]}…: {_error_text(resp)}")
            try:
                for chunk in resp.iter_content(chunk_size=_CHUNK):
                    if chunk:
                        writer.write(chunk)
                        on_bytes(len(chunk))
            except requests.RequestException as exc:
                raise RegistryError(
                    f"download of {desc.digest[:19]}… from {ref.registry} broke off: {_short(exc)}",
                    hint="pull again: the partial download is kept and resumed",
                ) from exc

    # --- writes --------------------------------------------------------------------------

    async def push_blob(self, ref: ImageRef, desc: Descriptor, path: Path, on_bytes: ByteProgress) -> None:
        def run() -> None:
            client = self._client(ref)
            container = self._container(ref)
            layer = {"digest": desc.digest, "size": desc.size, "mediaType": desc.media_type}
            try:
                resp = client.upload_blob(str(path), container, layer, do_chunked=desc.size > CHUNKED_UPLOAD_ABOVE)
            except ValueError as exc:  # oras' own "Issue with …" errors
                raise RegistryError(f"upload of {desc.digest[:19]}… to {ref.registry} failed: {exc}") from exc
            if resp.status_code not in (200, 201, 202):
                raise RegistryError(f"{ref.registry} refused blob {desc.digest[:19]}…: {_error_text(resp)}")
            on_bytes(desc.size)

        await asyncio.to_thread(run)

    async def push_manifest(self, ref: ImageRef, reference: str, data: bytes, media_type: str) -> str:
        def run() -> str:
            client = self._client(ref)
            url = client.url(f"/v2/{ref.repository}/manifests/{reference}")
            with client.do_request(url, "PUT", data=data, headers={"Content-Type": media_type}) as resp:
                if resp.status_code not in (200, 201, 202):
                    raise RegistryError(f"{ref.registry} refused the manifest for {ref}: {_error_text(resp)}")
            return digest_bytes(data)

        return await asyncio.to_thread(run)

    async def check_login(self, host: str) -> None:
        ref = ImageRef.parse(f"{host}/x")

        def run() -> None:
            client = self._client(ref)
            with client.do_request(client.url("/v2/"), "GET") as resp:
                if resp.status_code != 200:
                    raise RegistryError(f"{host} answered /v2/ with {_error_text(resp)}")

        await asyncio.to_thread(run)


def _read_bounded(resp: requests.Response, limit: int, what: str) -> bytes:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise ImageError(f"{what} is {length} bytes, over the {limit}-byte limit")
    buf = bytearray()
    for chunk in resp.iter_content(chunk_size=65536):
        buf += chunk
        if len(buf) > limit:
            raise ImageError(f"{what} is over the {limit}-byte limit", hint="the registry is broken or hostile")
    return bytes(buf)
