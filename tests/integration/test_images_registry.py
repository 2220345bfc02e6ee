"""Images end to end against a real registry (Debian's docker-registry on 127.0.0.1).

skopeo (an independent client) pushes fabricated images; msb pulls them back through oras,
builds the root filesystem and boots a VM from it; the files inside are what the layers say.
"""

from __future__ import annotations

import http.server
import os
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import AuthError, ImageError
from engine.images.archive import import_layout
from engine.images.credentials import Credentials
from engine.images.oci import OCI_LAYER, Platform
from engine.images.pull import pull_image
from engine.images.push import push_image
from engine.images.registry import OrasRegistry
from engine.images.resolve import ResolvedRoot, resolve_root
from engine.images.rootfs import ensure_rootfs
from engine.images.store import ImageStore
from engine.sandbox.engine import Engine
from tests.support.images import Expect, FabricatedImage, gzip_and_zstd, multi_layer_whiteouts, two_platform_index
from tests.support.registry import LocalRegistry, push_layout, skopeo_inspect


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def anon() -> OrasRegistry:
    return OrasRegistry(use_stored_credentials=False)


def check_tree(tree: Path, expect: Expect) -> None:
    """The host-side view of the built root filesystem matches the image's expectations."""

    def p(path: str) -> Path:
        return tree / path.lstrip("/")

    for path, content in expect.files.items():
        assert p(path).read_bytes() == content, path
    for path, mode in expect.modes.items():
        assert stat.S_IMODE(os.lstat(p(path)).st_mode) == mode, path
    for path, target in expect.symlinks.items():
        assert os.readlink(p(path)) == target, path
    for a, b in expect.hardlinks:
        assert os.lstat(p(a)).st_ino == os.lstat(p(b)).st_ino, (a, b)
    for path in expect.dirs:
        assert p(path).is_dir(), path
    for path in expect.absent:
        assert not os.path.lexists(p(path)), path


async def boot_and_check(root: ResolvedRoot, expect: Expect, name: str) -> None:
    """Boot a VM from the image and read the expected files from inside the guest."""
    engine = Engine()
    sb = await engine.start(root.spec(name, memory_mib=256))
    try:
        for path, content in expect.files.items():
            if path.startswith("/bin/") or len(content) > 1 << 16:
                continue
            assert await sb.read_file(path) == content, path
        for path in expect.absent:
            res = await sb.exec(["test", "-e", path])
            assert res.exit_code == 1, f"{path} exists in the guest"
    finally:
        await sb.kill()


async def _pull_and_build(img: FabricatedImage, reg: LocalRegistry, repo: str, store: ImageStore,
                          tmp_path: Path, **push_kw: object) -> ResolvedRoot:
    pushed = push_layout(img.layout, img.ref, reg, f"{repo}:v1", **push_kw)  # type: ignore[arg-type]
    result = await pull_image(pushed.ref, store, anon())
    assert not result.up_to_date
    root = await resolve_root(pushed.ref, store=store, cache_dir=tmp_path / "cache", registry=anon())
    check_tree(root.rootfs, img.expect)
    return root


async def test_multi_layer_whiteouts_opaque_boot(registry: LocalRegistry, repo: str, store: ImageStore,
                                                 tmp_path: Path) -> None:
    img = multi_layer_whiteouts(tmp_path / "img")
    root = await _pull_and_build(img, registry, repo, store, tmp_path)
    assert root.defaults.env.get("MSB_TEST") == "1" and root.defaults.workdir == "/data"
    engine = Engine()
    sb = await engine.start(root.spec("img-wh", memory_mib=256))
    try:
        script = "echo $MSB_TEST; pwd; cat /etc/msb-base; ls /opq; test -e /data/gone || echo gone"
        res = await sb.exec(["sh", "-c", script])
        assert res.exit_code == 0, res
        assert res.stdout.decode().split("\n")[:5] == ["1", "/data", "base v3", "new", "gone"]
        st = await sb.exec(["stat", "-c", "%a", "/usr/bin/msb-suid"])
        assert st.stdout.decode().strip() == "4755"
    finally:
        await sb.kill()


async def test_gzip_and_zstd_layers_boot(registry: LocalRegistry, repo: str, store: ImageStore,
                                         tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path / "img")
    root = await _pull_and_build(img, registry, repo, store, tmp_path)
    await boot_and_check(root, img.expect, "img-comp")


async def test_uncompressed_layer_pushed_by_msb(registry: LocalRegistry, repo: str, store: ImageStore,
                                                tmp_path: Path) -> None:
    """skopeo would gzip a plain tar on push; msb pushes it as it is and pulls it back."""
    img = gzip_and_zstd(tmp_path / "img")
    [rec] = import_layout(store, img.layout, name=f"{registry.host}/{repo}:plain", ref_name=img.ref)
    res = await push_image(store, rec.name, None, anon())
    assert res.pushed_blobs == len(img.layers) + 1
    raw = skopeo_inspect(f"{registry.host}/{repo}:plain", raw=True)
    assert OCI_LAYER in [layer["mediaType"] for layer in raw["layers"]]
    fresh = ImageStore(tmp_path / "store2")
    pulled = await pull_image(f"{registry.host}/{repo}:plain", fresh, anon())
    assert pulled.record.manifest == rec.manifest
    built = ensure_rootfs(fresh, pulled.record, tmp_path / "cache2")
    check_tree(built.tree, img.expect)


async def test_manifest_list_two_platforms(registry: LocalRegistry, repo: str, store: ImageStore,
                                           tmp_path: Path) -> None:
    img = two_platform_index(tmp_path / "img")
    root = await _pull_and_build(img, registry, repo, store, tmp_path, all_platforms=True)
    assert root.record is not None and root.record.digest == img.top.digest  # named by the index
    await boot_and_check(root, img.expect, "img-plat")
    arm = await pull_image(f"{registry.host}/{repo}:v1", ImageStore(tmp_path / "arm"), anon(),
                           platform=Platform(os="linux", architecture="arm64", variant="v8"))
    built = ensure_rootfs(ImageStore(tmp_path / "arm"), arm.record, tmp_path / "cache-arm")
    assert (built.tree / "platform").read_bytes() == b"arm64\n"


async def test_second_sandbox_reuses_rootfs(registry: LocalRegistry, repo: str, store: ImageStore,
                                            tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path / "img")
    pushed = push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    first = await resolve_root(pushed.ref, store=store, cache_dir=tmp_path / "c", registry=anon())
    second = await resolve_root(pushed.ref, store=store, cache_dir=tmp_path / "c", registry=anon())
    assert first.built and not second.built
    assert first.root_image == second.root_image


async def test_auth_none_wrong_right(auth_registry: LocalRegistry, repo: str, store: ImageStore,
                                     tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path / "img")
    pushed = push_layout(img.layout, img.ref, auth_registry, f"{repo}:v1", creds=auth_registry.creds)
    with pytest.raises(AuthError, match="requires authentication") as none:
        await pull_image(pushed.ref, store, anon())
    assert "msb registry login" in str(none.value)
    wrong = OrasRegistry(creds={auth_registry.host: Credentials(username=auth_registry.username, password="nope")},
                         use_stored_credentials=False)
    with pytest.raises(AuthError, match="rejected the credentials"):
        await pull_image(pushed.ref, store, wrong)
    right = OrasRegistry(creds={auth_registry.host: Credentials(username=auth_registry.username,
                                                                password=auth_registry.password or "")},
                         use_stored_credentials=False)  # fmt: skip
    res = await pull_image(pushed.ref, store, right)
    assert res.record.name == pushed.ref
    assert len(store.manifest(res.record).layers) == len(img.layers)


def test_cli_login_then_pull(auth_registry: LocalRegistry, repo: str, tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path / "img")
    pushed = push_layout(img.layout, img.ref, auth_registry, f"{repo}:v1", creds=auth_registry.creds)
    env = {**os.environ, "MSB_STORAGE_PATH": str(tmp_path / "state"), "MSB_CACHE_DIR": str(tmp_path / "cache"),
           "DOCKER_CONFIG": str(tmp_path / "docker")}  # fmt: skip
    msb = [sys.executable, "-m", "engine.cli.main"]
    denied = subprocess.run([*msb, "pull", pushed.ref], env=env, capture_output=True, text=True)
    assert denied.returncode == 1 and "requires authentication" in denied.stderr
    bad = subprocess.run([*msb, "registry", "login", auth_registry.host, "-u", "x", "--password-stdin"],
                         input="wrong\n", env=env, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "rejected" in bad.stderr
    ok = subprocess.run([*msb, "registry", "login", auth_registry.host, "-u", auth_registry.username,
                         "--password-stdin"], input=f"{auth_registry.password}\n", env=env, capture_output=True,
                        text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    pulled = subprocess.run([*msb, "pull", pushed.ref], env=env, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    listed = subprocess.run([*msb, "images", "--json"], env=env, capture_output=True, text=True)
    assert repo in listed.stdout


class _CorruptingProxy(http.server.ThreadingHTTPServer):
    """Forwards to the registry; the first GET of ``target`` gets one byte flipped."""

    def __init__(self, upstream: str, target: str) -> None:
        self.upstream, self.target, self.corrupted = upstream, target, 0
        self.blob_gets = 0
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _CorruptingProxy

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self, method: str) -> None:
        req = urllib.request.Request(f"http://{self.server.upstream}{self.path}", method=method,
                                     headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            resp = opener.open(req, timeout=10)
            status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, e.headers, e.read()
        if method == "GET" and self.server.target in self.path:
            self.server.blob_gets += 1
            if not self.server.corrupted and body:
                self.server.corrupted = 1
                body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_HEAD(self) -> None:
        self._forward("HEAD")


@pytest.fixture
def corrupting(registry: LocalRegistry) -> Iterator[_CorruptingProxy]:
    proxy = _CorruptingProxy(registry.host, "")
    t = threading.Thread(target=proxy.serve_forever, daemon=True)
    t.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


async def test_corrupted_blob_rejected_and_refetched(registry: LocalRegistry, corrupting: _CorruptingProxy,
                                                     repo: str, store: ImageStore, tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path / "img")
    push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    target = skopeo_inspect(f"{registry.host}/{repo}:v1", raw=True)["layers"][-1]["digest"]
    corrupting.target = target
    host = f"127.0.0.1:{corrupting.server_address[1]}"
    res = await pull_image(f"{host}/{repo}:v1", store, anon())
    assert corrupting.corrupted == 1 and corrupting.blob_gets == 2  # rejected, then fetched again
    assert store.verify_blob(target)
    assert res.record.manifest


async def test_registry_that_always_corrupts_stores_nothing(registry: LocalRegistry, repo: str,
                                                            store: ImageStore, tmp_path: Path) -> None:
    img = gzip_and_zstd(tmp_path / "img")
    push_layout(img.layout, img.ref, registry, f"{repo}:v1")
    target = skopeo_inspect(f"{registry.host}/{repo}:v1", raw=True)["layers"][-1]["digest"].split(":", 1)[1]
    data = registry.workdir / "data/docker/registry/v2/blobs/sha256" / target[:2] / target / "data"
    blob = data.read_bytes()
    data.write_bytes(bytes([blob[0] ^ 0xFF]) + blob[1:])
    with pytest.raises(ImageError, match="failed verification twice"):
        await pull_image(f"{registry.host}/{repo}:v1", store, anon())
    assert not store.has_blob("sha256:" + target)
    assert store.get(f"{registry.host}/{repo}:v1") is None


def _hostile_layout(root: Path, tmp: Path) -> None:
    """A valid image whose second layer writes through a symlink to outside the root."""
    import io
    import tarfile

    from engine.images.layout import LayoutWriter
    from engine.images.oci import OCI_LAYER, ImageConfig

    writer = LayoutWriter(root)
    cfg = ImageConfig()
    layers = []
    for entries in ([("escape", "symlink", "../../../../../../tmp")], [("escape/msb-pwned", "file", "x")]):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, kind, data in entries:
                ti = tarfile.TarInfo(name)
                if kind == "symlink":
                    ti.type, ti.linkname = tarfile.SYMTYPE, data
                    t.addfile(ti)
                else:
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data.encode()))
        desc = writer.add_bytes(buf.getvalue(), OCI_LAYER)
        layers.append(desc)
        cfg.rootfs.diff_ids.append(desc.digest)
    writer.add_image(layers, cfg, ref_name="evil")
    writer.close()


async def test_hostile_image_pulls_but_never_unpacks_outside(registry: LocalRegistry, repo: str,
                                                             store: ImageStore, tmp_path: Path) -> None:
    from engine.errors import HostileLayerError

    _hostile_layout(tmp_path / "evil", tmp_path)
    [rec] = import_layout(store, tmp_path / "evil", name=f"{registry.host}/{repo}:evil")
    await push_image(store, rec.name, None, anon())
    fresh = ImageStore(tmp_path / "fresh")
    pulled = await pull_image(rec.name, fresh, anon())  # the blobs are valid: the pull succeeds
    with pytest.raises(HostileLayerError):
        ensure_rootfs(fresh, pulled.record, tmp_path / "cache")
    assert not Path("/tmp/msb-pwned").exists()
    leftovers = [p.name for p in (tmp_path / "cache" / "image-rootfs").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # the half-built tree was thrown away


def test_cli_pull_of_base_image_without_docker_hub_says_how_to_build(tmp_path: Path) -> None:
    # Make Docker Hub unreachable even on a host with internet: a proxy that refuses.
    env = {**os.environ, "MSB_CACHE_DIR": str(tmp_path / "cache"), "MSB_STORAGE_PATH": str(tmp_path / "state"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": ""}  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "pull", "microsandbox/python"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1
    assert "msb image build microsandbox/python" in res.stderr
    assert "Traceback" not in res.stderr
