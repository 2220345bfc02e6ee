"""An in-memory :class:`~engine.images.registry.ImageRegistry` for unit tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.errors import AuthError, ImageError, RegistryError
from engine.images.credentials import Credentials
from engine.images.oci import Descriptor, digest_bytes
from engine.images.reference import ImageRef
from engine.images.registry import ByteProgress, ManifestResponse
from engine.images.store import BlobWriter

_CHUNK = 1 << 20


class FakeRegistry:
    """An in-memory registry for unit tests: repositories of manifests and blobs.

    Knobs: ``corrupt_once`` (digests whose first download is corrupted), ``fail_after``
    (digest → bytes after which the first download breaks off), ``require`` (credentials
    demanded), ``calls`` (a log of operations).
    """

    def __init__(self, *, require: Credentials | None = None, creds: Credentials | None = None) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.corrupt_once: set[str] = set()
        self.fail_after: dict[str, int] = {}
        self.require = require
        self.creds = creds
        self.calls: list[tuple[str, str]] = []
        self.range_requests = 0

    def _check_auth(self, host: str) -> None:
        if self.require is None:
            return
        if self.creds is None:
            raise AuthError(f"registry {host} requires authentication", hint=f"msb registry login {host}")
        if (self.creds.username, self.creds.password) != (self.require.username, self.require.password):
            raise AuthError(f"registry {host} rejected the credentials of {self.creds.username!r}")

    def add_blob(self, data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[d] = data
        return d

    def add_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        d = digest_bytes(data)
        self.manifests[(repo, reference)] = (data, media_type)
        self.manifests[(repo, d)] = (data, media_type)
        return d

    async def get_manifest(self, ref: ImageRef, reference: str) -> ManifestResponse:
        self._check_auth(ref.registry)
        self.calls.append(("manifest", f"{ref.name}:{reference}"))
        try:
            data, mt = self.manifests[(ref.name, reference)]
        except KeyError:
            raise ImageError(f"{ref.name}:{reference} not found on {ref.registry}") from None
        return ManifestResponse(data=data, media_type=mt, digest=digest_bytes(data))

    async def has_blob(self, ref: ImageRef, digest: str) -> bool:
        return digest in self.blobs

    async def fetch_blob(self, ref: ImageRef, desc: Descriptor, writer: BlobWriter, on_bytes: ByteProgress) -> None:
        self._check_auth(ref.registry)
        self.calls.append(("blob", desc.digest))
        data = self.blobs.get(desc.digest)
        if data is None:
            raise ImageError(f"blob {desc.digest} of {ref} is missing on {ref.registry}")
        if desc.digest in self.corrupt_once:
            self.corrupt_once.discard(desc.digest)
            data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
        start = writer.offset
        if start:
            self.range_requests += 1
        cut = self.fail_after.pop(desc.digest, None)
        body = data[start:]
        if cut is not None:
            writer.write(body[:cut])
            raise RegistryError(f"download of {desc.digest[:19]}… broke off (fake)")
        for i in range(0, len(body), _CHUNK):
            writer.write(body[i : i + _CHUNK])
            on_bytes(len(body[i : i + _CHUNK]))

    async def push_blob(self, ref: ImageRef, desc: Descriptor, path: Path, on_bytes: ByteProgress) -> None:
        self._check_auth(ref.registry)
        self.calls.append(("push-blob", desc.digest))
        self.blobs[desc.digest] = path.read_bytes()
        on_bytes(desc.size)

    async def push_manifest(self, ref: ImageRef, reference: str, data: bytes, media_type: str) -> str:
        self._check_auth(ref.registry)
        self.calls.append(("push-manifest", f"{ref.name}:{reference}"))
        return self.add_manifest(ref.name, reference, data, media_type)

    async def check_login(self, host: str) -> None:
        self._check_auth(host)
