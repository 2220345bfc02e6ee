"""Test images fabricated as OCI image layouts: no registry, no network, reproducible digests.

Each builder writes a layout under the directory it is given and returns a ``FabricatedImage``:
the layout, the ref name to copy it by (``oci:DIR:REF``) and what a correct pull must produce
(``Expect``). The bootable ones start from the busybox tree of ``scripts/build-test-rootfs.sh``
(``/bin/sh`` and the applets; the guest agent is injected by the engine).

Layers are written entry by entry with ``LayerBuilder`` because whiteouts (``.wh.NAME``,
``.wh..wh..opq``) must appear in the tar by name, which tarring a directory cannot express.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import random
import string
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

import zstandard

from engine import paths
from engine.images.layout import LAYER_MEDIA_TYPE, Compression, LayoutWriter
from engine.images.oci import ContainerConfig, Descriptor, ImageConfig, RootFs, host_platform
from tests.support import InfraError

EPOCH = 1_700_000_000
"""mtime of every tar entry, so the same inputs always give the same digests."""
CREATED = "2023-11-14T22:13:20Z"
MiB = 1 << 20
Layer = tuple[Descriptor, str]
"""A layer in a layout: its descriptor and its diff_id."""


@dataclass(frozen=True)
class Expect:
    """What the merged root filesystem of a correct pull holds. Paths are absolute, as in the guest."""

    files: dict[str, bytes] = field(default_factory=dict)
    """Regular files and their exact content."""
    sha256: dict[str, str] = field(default_factory=dict)
    """Regular files too big to keep in memory: the hex sha256 of their content."""
    modes: dict[str, int] = field(default_factory=dict)
    """Permission bits (``stat.S_IMODE``: setuid, setgid and sticky included)."""
    symlinks: dict[str, str] = field(default_factory=dict)
    """Symlink path -> target, verbatim."""
    hardlinks: tuple[tuple[str, str], ...] = ()
    """Pairs of paths that must be one inode."""
    dirs: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    """Paths that must not exist: whited-out files, hidden lower content, the markers themselves."""

    def over(self, lower: Expect) -> Expect:
        """These expectations stacked on ``lower`` (ours win)."""
        return Expect(
            files={**lower.files, **self.files},
            sha256={**lower.sha256, **self.sha256},
            modes={**lower.modes, **self.modes},
            symlinks={**lower.symlinks, **self.symlinks},
            hardlinks=lower.hardlinks + self.hardlinks,
            dirs=lower.dirs + self.dirs,
            absent=lower.absent + self.absent,
        )


@dataclass(frozen=True)
class FabricatedImage:
    """An image written to an OCI layout, and what pulling it must give."""

    layout: Path
    ref: str
    """The ``org.opencontainers.image.ref.name`` in ``index.json``."""
    top: Descriptor
    """The top-level manifest, or the index for a multi-platform image."""
    layers: tuple[Descriptor, ...]
    """Layers of the (host platform's) manifest, base first, as written (before any push)."""
    config: ImageConfig
    expect: Expect
    platforms: dict[str, FabricatedImage] = field(default_factory=dict)
    """For an index: ``"linux/amd64"`` -> that platform's image (same layout and ref)."""

    @property
    def layer_media_types(self) -> list[str]:
        return [d.media_type for d in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.rootfs.diff_ids)


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through it on the way to ``out``."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b)
        self.hash.update(mv)
        self.out.write(mv)
        return len(mv)


class LayerBuilder:
    """Writes one layer tar entry by entry, compressing as it goes (root-owned, fixed mtimes).

    ``with LayerBuilder(writer.root, "zstd") as lb: lb.file(...); layer = lb.finish(writer)``
    """

    def __init__(self, out_dir: Path, compression: Compression = "gzip", *, level: int | None = None) -> None:
        self.compression = compression
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".layer")
        self._path = Path(tmp)
        self._raw = open(fd, "wb")  # noqa: SIM115 - closed by finish() / __exit__
        self._compressed = _Hashing(self._raw)
        self._compressor: Any = self._compressed
        if compression == "gzip":
            self._compressor = gzip.GzipFile(fileobj=self._compressed, mode="wb", compresslevel=level or 6, mtime=0)
        elif compression == "zstd":
            sink = cast("IO[bytes]", self._compressed)
            self._compressor = zstandard.ZstdCompressor(level=level or 3).stream_writer(sink, closefd=False)
        self._plain = _Hashing(self._compressor)
        self.tar = tarfile.open(fileobj=self._plain, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def __enter__(self) -> LayerBuilder:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if not self._raw.closed:  # finish() was not reached
            self._raw.close()
            self._path.unlink(missing_ok=True)

    def dir(self, path: str, mode: int = 0o755) -> None:
        self.tar.addfile(_info(path, tarfile.DIRTYPE, mode))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        ti = _info(path, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, path: str, target: str) -> None:
        ti = _info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, path: str, target: str) -> None:
        """A hard link to ``target``, an earlier entry of this layer (absolute path)."""
        ti = _info(path, tarfile.LNKTYPE, 0o644)
        ti.linkname = target.lstrip("/")
        self.tar.addfile(ti)

    def whiteout(self, path: str) -> None:
        """Delete ``path`` (and everything under it) of the lower layers."""
        parent, name = posixpath.split(path)
        self.file(posixpath.join(parent, ".wh." + name), b"")

    def opaque(self, directory: str) -> None:
        """Hide everything the lower layers had in ``directory``; this layer's entries stay."""
        self.file(posixpath.join(directory, ".wh..wh..opq"), b"")

    def tree(self, src: Path, *, skip: frozenset[str] = frozenset({".complete"})) -> None:
        """Add the contents of ``src`` (not ``src`` itself), sorted, owned by root."""
        for path in sorted(src.rglob("*"), key=lambda p: p.relative_to(src).parts):
            rel = path.relative_to(src)
            if rel.parts[0] in skip:
                continue
            ti = self.tar.gettarinfo(str(path), arcname=rel.as_posix())  # hard links detected here
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = EPOCH
            if ti.isreg():
                with open(path, "rb") as f:
                    self.tar.addfile(ti, f)
            else:
                self.tar.addfile(ti)

    def finish(self, writer: LayoutWriter) -> Layer:
        """Close the tar and move it into ``writer``'s layout.

        Returns:
            ``(layer descriptor, diff_id)``.
        """
        self.tar.close()
        if self._compressor is not self._compressed:
            self._compressor.close()
        self._raw.close()
        desc = writer.add_file(self._path, LAYER_MEDIA_TYPE[self.compression], move=True)
        if desc.digest != "sha256:" + self._compressed.hash.hexdigest():
            raise InfraError(f"layer {self._path} changed while it was being moved into {writer.root}")
        return desc, "sha256:" + self._plain.hash.hexdigest()


def _info(path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path.strip("/"))
    ti.type, ti.mode, ti.mtime = kind, mode, EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


# --- the busybox base ------------------------------------------------------------------------

BUSYBOX_EXPECT = Expect(
    files={"/etc/os-release-msb": b"msb-busybox\n"},
    modes={"/bin/busybox": 0o755, "/tmp": 0o1777},
    symlinks={"/bin/sh": "/bin/busybox"},
    dirs=("/bin", "/etc", "/tmp", "/root"),
    absent=("/.complete",),
)
BOOT_CONFIG = ContainerConfig(env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], cmd=["sh"])


def busybox_tree() -> Path:
    """The busybox root tree ``make setup`` builds (``$MSB_CACHE_DIR/rootfs-dirs/busybox``).

    Raises:
        InfraError: it has not been built.
    """
    tree = paths.cache_dir() / "rootfs-dirs" / "busybox"
    if not (tree / ".complete").is_file():
        raise InfraError(f"{tree} is missing: run `make setup` (scripts/build-test-rootfs.sh)")
    return tree


def add_busybox_layer(writer: LayoutWriter) -> Layer:
    """The busybox tree as a gzip layer of ``writer`` (the same digest every time)."""
    with LayerBuilder(writer.root, "gzip") as lb:
        lb.tree(busybox_tree())
        return lb.finish(writer)


def _image(writer: LayoutWriter, layers: list[Layer], expect: Expect, *, ref: str | None,
           container: ContainerConfig = BOOT_CONFIG, arch: str | None = None) -> FabricatedImage:  # fmt: skip
    """Write config + manifest over ``layers`` (listed in index.json unless ``ref`` is None)."""
    host = host_platform()
    arch = arch or host.architecture
    variant = "v8" if arch == "arm64" else (host.variant if arch == host.architecture else None)
    config = ImageConfig(architecture=arch, os="linux", variant=variant, created=CREATED, config=container,
                         rootfs=RootFs(diff_ids=[diff for _, diff in layers]))  # fmt: skip
    top = writer.add_image([d for d, _ in layers], config, ref_name=ref, top_level=ref is not None)
    return FabricatedImage(writer.root, ref or "", top, tuple(d for d, _ in layers), config, expect)


def busybox_layer(tmp: Path, ref: str = "busybox") -> FabricatedImage:
    """A bootable one-layer image: the busybox tree (gzip); Cmd ``["sh"]``."""
    root = tmp / "busybox-layout"
    writer = LayoutWriter(root)
    image = _image(writer, [add_busybox_layer(writer)], BUSYBOX_EXPECT, ref=ref)
    writer.close()
    return image


# --- the fabricated images -----------------------------------------------------------------


def multi_layer_whiteouts(tmp: Path, ref: str = "whiteouts") -> FabricatedImage:
    """Busybox + 3 layers exercising overwrite, whiteout, opaque dirs, links and setuid.

    L1 (gzip) creates /etc/msb-base, /data/{keep,gone}, /opq/old1, /opq/sub/old2, /link ->
    /data/keep, /data/keep-hard (hard link to /data/keep). L2 (zstd) whites out /data/gone and
    makes /opq opaque (the marker comes first, as docker sorts it) while adding /opq/new.
    L3 (gzip) overwrites /etc/msb-base and adds /usr/bin/msb-suid with mode 4755.
    """
    root = tmp / "whiteouts-layout"
    writer = LayoutWriter(root)
    layers = [add_busybox_layer(writer)]
    with LayerBuilder(root, "gzip") as lb:
        for d in ("etc", "data", "opq", "opq/sub"):
            lb.dir(d)
        lb.file("/etc/msb-base", b"base v1\n")
        lb.file("/data/keep", b"keep me\n")
        lb.hardlink("/data/keep-hard", "/data/keep")
        lb.file("/data/gone", b"whiteout me\n")
        lb.file("/opq/old1", b"hidden by the opaque marker\n")
        lb.file("/opq/sub/old2", b"hidden by the opaque marker\n")
        lb.symlink("/link", "/data/keep")
        layers.append(lb.finish(writer))
    with LayerBuilder(root, "zstd") as lb:
        lb.dir("data")
        lb.whiteout("/data/gone")
        lb.dir("opq")
        lb.opaque("/opq")
        lb.file("/opq/new", b"new in L2\n")
        layers.append(lb.finish(writer))
    with LayerBuilder(root, "gzip") as lb:
        for d in ("etc", "usr", "usr/bin"):
            lb.dir(d)
        lb.file("/etc/msb-base", b"base v3\n")
        lb.file("/usr/bin/msb-suid", b"#!/bin/sh\necho suid\n", mode=0o4755)
        layers.append(lb.finish(writer))
    expect = Expect(
        files={"/etc/msb-base": b"base v3\n", "/data/keep": b"keep me\n", "/data/keep-hard": b"keep me\n",
               "/opq/new": b"new in L2\n", "/usr/bin/msb-suid": b"#!/bin/sh\necho suid\n"},
        modes={"/usr/bin/msb-suid": 0o4755, "/data/keep": 0o644, "/etc/msb-base": 0o644},
        symlinks={"/link": "/data/keep"},
        hardlinks=(("/data/keep", "/data/keep-hard"),),
        dirs=("/data", "/opq"),
        absent=("/data/gone", "/data/.wh.gone", "/opq/old1", "/opq/sub", "/opq/sub/old2", "/opq/.wh..wh..opq"),
    )  # fmt: skip
    container = ContainerConfig(env=["PATH=/usr/bin:/bin", "MSB_TEST=1"], working_dir="/data", cmd=["sh"], user="0")
    image = _image(writer, layers, expect.over(BUSYBOX_EXPECT), ref=ref, container=container)
    writer.close()
    return image


def gzip_and_zstd(tmp: Path, ref: str = "compression") -> FabricatedImage:
    """Busybox + a gzip, a zstd and an uncompressed layer, in that order.

    Each adds /layers/<kind> and rewrites /layers/order, so the last (plain) one must win.
    """
    root = tmp / "compression-layout"
    writer = LayoutWriter(root)
    layers = [add_busybox_layer(writer)]
    kinds: tuple[Compression, ...] = ("gzip", "zstd", "none")
    for kind in kinds:
        with LayerBuilder(root, kind) as lb:
            lb.dir("layers")
            lb.file(f"/layers/{kind}", f"from the {kind} layer\n".encode())
            lb.file("/layers/order", f"{kind}\n".encode())
            layers.append(lb.finish(writer))
    files = {f"/layers/{k}": f"from the {k} layer\n".encode() for k in kinds}
    expect = Expect(files={**files, "/layers/order": b"none\n"})
    image = _image(writer, layers, expect.over(BUSYBOX_EXPECT), ref=ref)
    writer.close()
    return image


def two_platform_index(tmp: Path, ref: str = "multiarch") -> FabricatedImage:
    """An index of linux/amd64 and linux/arm64/v8 images: busybox + /platform (``b"amd64\\n"`` …).

    Both share the busybox layer, which is this host's binary: only the host's variant boots.
    ``platforms`` holds each variant; the top-level fields describe the host's (or amd64).
    """
    root = tmp / "multiarch-layout"
    writer = LayoutWriter(root)
    base = add_busybox_layer(writer)
    variants: dict[str, FabricatedImage] = {}
    for arch in ("amd64", "arm64"):
        with LayerBuilder(root, "gzip") as lb:
            lb.file("/platform", f"{arch}\n".encode())
            top = lb.finish(writer)
        expect = Expect(files={"/platform": f"{arch}\n".encode()}).over(BUSYBOX_EXPECT)
        image = _image(writer, [base, top], expect, ref=None, arch=arch)
        variants[f"linux/{arch}"] = replace(image, ref=ref)
    index = writer.add_index([v.top for v in variants.values()], ref_name=ref)
    writer.close()
    host = variants.get(f"linux/{host_platform().architecture}", variants["linux/amd64"])
    return replace(host, top=index, platforms=variants)


def big_image(tmp: Path, total_mb: int = 100, layers: int = 5, *, seed: int = 0) -> FabricatedImage:
    """About ``total_mb`` MiB of files over ``layers`` gzip layers, for benchmarks (not bootable).

    Files of 256 KiB-4 MiB under /big/layerN/, alternating seeded random bytes (incompressible)
    and seeded word salad (compresses ~2x). Same arguments, same digests.
    """
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(4096)]
    root = tmp / "big-layout"
    writer = LayoutWriter(root)
    written: list[Layer] = []
    digests: dict[str, str] = {}
    per_layer = total_mb * MiB // layers
    for n in range(layers):
        with LayerBuilder(root, "gzip") as lb:
            for d in ("big", f"big/layer{n}"):
                lb.dir(d)
            left, i = per_layer, 0
            while left > 0:
                size = min(left, rng.randint(256 << 10, 4 * MiB))
                data = rng.randbytes(size) if i % 2 == 0 else _text(rng, words, size)
                path = f"/big/layer{n}/file-{i:03d}" + (".bin" if i % 2 == 0 else ".txt")
                lb.file(path, data)
                digests[path] = hashlib.sha256(data).hexdigest()
                left, i = left - size, i + 1
            written.append(lb.finish(writer))
    image = _image(writer, written, Expect(sha256=digests), ref=f"big-{total_mb}m")
    writer.close()
    return image


def _text(rng: random.Random, words: list[str], size: int) -> bytes:
    out = b""
    while len(out) < size:
        out += (" ".join(rng.choices(words, k=size // 4)) + "\n").encode()
    return out[:size]
