"""Small images for unit tests, published into a FakeRegistry or an OCI layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from engine.images.fake_registry import FakeRegistry
from engine.images.layout import LayoutWriter, write_layer_tar
from engine.images.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, ImageConfig, Platform


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return root


def layer_blob(tmp: Path, files: dict[str, str], compression: str = "gzip") -> tuple[bytes, str]:
    """(compressed layer bytes, diff_id)."""
    src = tree(tmp / f"src-{len(list(tmp.iterdir()))}", files)
    path, _, diff_id = write_layer_tar(src, tmp, compression)  # type: ignore[arg-type]
    data = path.read_bytes()
    path.unlink()
    return data, diff_id


def publish(
    reg: FakeRegistry,
    repo: str,
    tag: str,
    tmp: Path,
    layers: list[dict[str, str]],
    *,
    env: list[str] | None = None,
    arch: str = "amd64",
    tag_it: bool = True,
) -> tuple[str, Descriptor]:
    """Put an image into ``reg``; returns (manifest digest, its descriptor with platform)."""
    descs = []
    cfg = ImageConfig(architecture=arch)
    if env:
        cfg.config.env = env
    cfg.config.working_dir = "/srv"
    cfg.config.cmd = ["sh"]
    for files in layers:
        data, diff_id = layer_blob(tmp, files)
        digest = reg.add_blob(data)
        descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(data)})
        cfg.rootfs.diff_ids.append(diff_id)
    cfg_bytes = json.dumps(cfg.wire()).encode()
    cfg_digest = reg.add_blob(cfg_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)}, "layers": descs,
    }  # fmt: skip
    data = json.dumps(manifest).encode()
    digest = reg.add_manifest(repo, tag if tag_it else "_untagged", data, OCI_MANIFEST)
    desc = Descriptor(media_type=OCI_MANIFEST, digest=digest, size=len(data),
                      platform=Platform(architecture=arch, os="linux"))  # fmt: skip
    return digest, desc


def publish_index(reg: FakeRegistry, repo: str, tag: str, manifests: list[Descriptor]) -> str:
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [m.wire() for m in manifests]}).encode()  # fmt: skip
    return reg.add_manifest(repo, tag, data, OCI_INDEX)


def write_layout(root: Path, tmp: Path, files: dict[str, str], ref_name: str) -> None:
    w = LayoutWriter(root)
    src = tree(tmp / "layout-src", files)
    path, _, diff_id = write_layer_tar(src, tmp, "gzip")
    desc = w.add_file(path, OCI_LAYER_GZIP, move=True)
    cfg = ImageConfig()
    cfg.rootfs.diff_ids.append(diff_id)
    w.add_image([desc], cfg, ref_name=ref_name)
    w.close()


def docker_save_tar(out: Path, files: dict[str, str], repo_tag: str) -> None:
    """A `docker save`-style archive: manifest.json, config json, one uncompressed layer.tar."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for rel, content in files.items():
            ti = tarfile.TarInfo(rel)
            ti.size = len(content.encode())
            t.addfile(ti, io.BytesIO(content.encode()))
    import hashlib

    diff = "sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()
    cfg = ImageConfig()
    cfg.rootfs.diff_ids.append(diff)
    cfg_bytes = json.dumps(cfg.wire()).encode()
    with tarfile.open(out, "w") as t:
        for name, data in (
            ("abc/layer.tar", layer.getvalue()),
            ("cfg.json", cfg_bytes),
            ("manifest.json", _docker_manifest(repo_tag)),
        ):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))


def _docker_manifest(repo_tag: str) -> bytes:
    return json.dumps([{"Config": "cfg.json", "RepoTags": [repo_tag], "Layers": ["abc/layer.tar"]}]).encode()
