"""OCI / Docker v2 image documents as pydantic models, with the host's bounds.

Everything here is parsed from bytes a registry (or an imported tarball) sent us, so sizes and
counts are bounded and digests are validated before anything uses them.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_COMPRESSION: dict[str, str | None] = {
    OCI_LAYER: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    DOCKER_FOREIGN_LAYER: "gzip",
}

MAX_MANIFEST_BYTES = 4 << 20
"""Largest manifest or index accepted (distribution's own limit)."""
MAX_CONFIG_BYTES = 8 << 20
MAX_LAYERS = 256
MAX_BLOB_BYTES = 64 << 30
"""Largest single blob accepted (a layer of 64 GiB is not a sandbox image)."""

DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
Digest = Annotated[str, Field(pattern=DIGEST_RE.pattern)]


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hasher(digest: str) -> Any:
    """A fresh hashlib object for ``digest``'s algorithm."""
    algo = digest.split(":", 1)[0]
    if algo not in ("sha256", "sha512"):
        raise ImageError(f"unsupported digest algorithm {algo!r}")
    return hashlib.new(algo)


class Platform(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    architecture: str = Field(max_length=64)
    os: str = Field(max_length=64)
    variant: str | None = Field(default=None, max_length=64)
    os_version: str | None = Field(default=None, alias="os.version", max_length=128)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


class Descriptor(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    media_type: str = Field(alias="mediaType", max_length=255)
    digest: Digest
    size: int = Field(ge=0, le=MAX_BLOB_BYTES)
    platform: Platform | None = None
    annotations: dict[str, str] | None = None
    urls: list[str] | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    config: Descriptor
    layers: list[Descriptor] = Field(max_length=MAX_LAYERS)
    annotations: dict[str, str] | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class Index(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    manifests: list[Descriptor] = Field(max_length=1024)
    annotations: dict[str, str] | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class ContainerConfig(BaseModel):
    """The runtime defaults of an image (``config`` in the image config)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    env: list[str] | None = Field(default=None, alias="Env", max_length=4096)
    entrypoint: list[str] | None = Field(default=None, alias="Entrypoint", max_length=4096)
    cmd: list[str] | None = Field(default=None, alias="Cmd", max_length=4096)
    working_dir: str | None = Field(default=None, alias="WorkingDir", max_length=4096)
    user: str | None = Field(default=None, alias="User", max_length=256)
    exposed_ports: dict[str, Any] | None = Field(default=None, alias="ExposedPorts")
    labels: dict[str, str] | None = Field(default=None, alias="Labels")


class RootFs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = "layers"
    diff_ids: list[Digest] = Field(default_factory=list, max_length=MAX_LAYERS)


class ImageConfig(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    created: str | None = None
    config: ContainerConfig = Field(default_factory=ContainerConfig)
    rootfs: RootFs = Field(default_factory=RootFs)
    history: list[dict[str, Any]] | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def parse_json(data: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(data) > limit:
        raise ImageError(f"{what} is {len(data)} bytes, over the {limit}-byte limit")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def media_type_of(doc: dict[str, Any], header: str | None = None) -> str:
    """The media type of a manifest-ish document: its own field, the HTTP header, or a guess."""
    mt = doc.get("mediaType") or header or ""
    if isinstance(mt, str) and mt.split(";")[0].strip() in (*MANIFEST_TYPES, *INDEX_TYPES):
        return mt.split(";")[0].strip()
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc:
        return OCI_MANIFEST
    raise ImageError(f"unsupported manifest type {mt!r}", hint="msb reads OCI and Docker v2 images (schema 2)")


def parse_manifest(data: bytes) -> Manifest:
    doc = parse_json(data, MAX_MANIFEST_BYTES, "manifest")
    try:
        m = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ImageError(f"malformed image manifest: {_first_error(exc)}") from exc
    if m.schema_version != 2:
        raise ImageError(f"manifest schemaVersion {m.schema_version} is not supported (only 2)")
    return m


def parse_index(data: bytes) -> Index:
    doc = parse_json(data, MAX_MANIFEST_BYTES, "image index")
    try:
        return Index.model_validate(doc)
    except ValidationError as exc:
        raise ImageError(f"malformed image index: {_first_error(exc)}") from exc


def parse_config(data: bytes) -> ImageConfig:
    doc = parse_json(data, MAX_CONFIG_BYTES, "image config")
    try:
        return ImageConfig.model_validate(doc)
    except ValidationError as exc:
        raise ImageError(f"malformed image config: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}"


def host_platform() -> Platform:
    """The platform images are chosen for: this host's architecture, Linux."""
    machine = _platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", None),
        "amd64": ("amd64", None),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "ppc64le": ("ppc64le", None),
        "s390x": ("s390x", None),
        "riscv64": ("riscv64", None),
    }.get(machine, (machine, None))
    return Platform(architecture=arch, os="linux", variant=variant)


def choose_platform(index: Index, want: Platform) -> Descriptor:
    """Pick ``want``'s manifest from an index (variant matched when both give one).

    Raises:
        ImageError: no manifest for that platform (the message lists what there is).
    """
    candidates = [
        d for d in index.manifests
        if d.platform is not None and d.platform.os == want.os and d.platform.architecture == want.architecture
        and d.media_type in (*MANIFEST_TYPES, *INDEX_TYPES)
    ]  # fmt: skip
    exact = [
        d for d in candidates
        if want.variant is None or d.platform is None or d.platform.variant in (None, want.variant)
    ]  # fmt: skip
    if exact:
        return exact[0]
    if candidates:
        return candidates[0]
    have = ", ".join(sorted({str(d.platform) for d in index.manifests if d.platform})) or "none listed"
    raise ImageError(f"the image has no variant for {want} (it has: {have})", hint="pick a tag built for this host")
