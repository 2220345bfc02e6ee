"""Templates: the key, the stage, the template's VM, RESUME's words, and the store on disk.

No QEMU runs here: the key is computed from the QEMU command line the template would get, so
any existing file stands in for the QEMU binary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from engine.cachebound import TEMPLATE_MAX_AGE_S
from engine.sandbox.spec import PortMap, VolumeMount
from engine.vm.backend import VmSpec
from engine.vm.qemu import build_argv
from engine.vm.template import (
    TEMPLATE_NAME,
    Template,
    TemplateStore,
    resume_params,
    stage_for,
    template_key,
    template_spec,
)

QEMU = "/bin/true"
DAY = 86400.0


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    """A directory with stand-in kernel, initramfs and root image files."""
    d = tmp_path / "boot"
    d.mkdir()
    for name, data in (("bzImage", b"kernel"), ("initrd", b"initramfs"), ("root.ext4", b"root image")):
        (d / name).write_bytes(data)
    return d


def upper(tmp_path: Path, mib: int = 64, name: str = "upper.ext4") -> Path:
    path = tmp_path / "own" / name
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return path


def vols(tmp_path: Path, n: int) -> tuple[VolumeMount, ...]:
    out = []
    for i in range(n):
        host = tmp_path / "own" / f"vol{i}"
        host.mkdir(parents=True, exist_ok=True)
        out.append(VolumeMount(host=host, guest=f"/data{i}", readonly=i % 2 == 0))
    return tuple(out)


def spec(boot: Path, **kw: object) -> VmSpec:
    fields: dict[str, object] = dict(name="sb", kernel=boot / "bzImage", initrd=boot / "initrd",
                                     root_image=boot / "root.ext4", run_dir=boot / "run", network="public")  # fmt: skip
    fields.update(kw)
    return VmSpec(**fields)  # type: ignore[arg-type]


def key(s: VmSpec, qemu: str = QEMU) -> str:
    return template_key(qemu, s, stage_for(s))


# ---------------------------------------------------------------- key


def test_key_is_stable_and_ignores_what_is_the_sandboxs_own(boot: Path, tmp_path: Path) -> None:
    base = key(spec(boot))
    assert base == key(spec(boot)) and len(base) == 32
    assert key(spec(boot, name="other", run_dir=tmp_path / "elsewhere")) == base
    assert key(spec(boot, ports=(PortMap(host_port=8080, guest_port=80),))) == base
    assert key(spec(boot, network="any")) == base  # the same device and guest setup as public
    # the writable layer and volumes count by size and number, not by whose they are
    a, b = upper(tmp_path, name="a"), upper(tmp_path, name="b")
    assert key(spec(boot, upper_image=a)) == key(spec(boot, upper_image=b))
    one = vols(tmp_path, 1)
    moved = (VolumeMount(host=tmp_path, guest=one[0].guest, readonly=not one[0].readonly),)
    assert key(spec(boot, volumes=one)) == key(spec(boot, volumes=moved))


def _rewrite(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"!")


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("name", ["root.ext4", "bzImage", "initrd"])
@pytest.mark.parametrize("change", [_rewrite, _touch], ids=["content", "mtime"])
def test_key_follows_the_boot_files(boot: Path, name: str, change: object) -> None:
    before = key(spec(boot))
    change(boot / name)  # type: ignore[operator]
    assert key(spec(boot)) != before


def test_key_follows_the_qemu_binary(boot: Path, tmp_path: Path) -> None:
    other = tmp_path / "qemu-system-x86_64"
    other.write_bytes(b"qemu")
    assert key(spec(boot), str(other)) != key(spec(boot))


@pytest.mark.parametrize(
    "change",
    [
        {"cpus": 2},
        {"memory_mib": 1024},
        {"network": "none"},
        {"network": "group"},
        {"accel": "kvm"},
        {"machine": "q35"},
        {"kernel_args": ("console=hvc0",)},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_key_follows_the_machine(boot: Path, change: dict[str, object]) -> None:
    if change.get("cpus", 1) > (os.cpu_count() or 1):  # type: ignore[operator]
        pytest.skip("one CPU")
    assert key(spec(boot, **change)) != key(spec(boot))


def test_key_follows_the_volume_count_and_upper_size(boot: Path, tmp_path: Path) -> None:
    keys = {
        key(spec(boot)),
        key(spec(boot, volumes=vols(tmp_path, 1))),
        key(spec(boot, volumes=vols(tmp_path, 2))),
        key(spec(boot, upper_image=upper(tmp_path, 64, "u64"))),
        key(spec(boot, upper_image=upper(tmp_path, 128, "u128"))),
    }
    assert len(keys) == 5


# ---------------------------------------------------------------- stage, template VM, RESUME


def test_stage_for(boot: Path, tmp_path: Path) -> None:
    assert stage_for(spec(boot)) == "ready"
    assert stage_for(spec(boot, network="none", ports=())) == "ready"
    assert stage_for(spec(boot, upper_image=upper(tmp_path))) == "root"
    assert stage_for(spec(boot, volumes=vols(tmp_path, 1))) == "root"


def test_template_spec_keeps_the_devices_but_nothing_of_the_sandbox(boot: Path, tmp_path: Path) -> None:
    own = spec(boot, name="mine", upper_image=upper(tmp_path), volumes=vols(tmp_path, 2), network="any",
               ports=(PortMap(host_port=8080, guest_port=80),))  # fmt: skip
    build, run = tmp_path / "build", tmp_path / "trun"
    t = template_spec(own, "root", build, run)
    assert t.name == TEMPLATE_NAME and t.run_dir == run
    assert t.upper_image == build / "upper-placeholder"
    assert [(v.host, v.guest, v.readonly) for v in t.volumes] == [(build, "/data0", True), (build, "/data1", True)]
    assert t.ports == () and t.network == "public"
    assert (t.memory_file, t.memory_shared, t.template_stage, t.incoming) == (build / "ram", True, "root", None)
    assert (t.cpus, t.memory_mib, t.kernel, t.root_image) == (own.cpus, own.memory_mib, own.kernel, own.root_image)
    sockets = {k: run / k for k in ("agent", "console", "qmp")}
    argv = " ".join(build_argv(QEMU, t, sockets))
    for text in (t.model_dump_json(), argv):
        assert str(tmp_path / "own") not in text and "mine" not in text and "hostfwd" not in text
    assert "msb.template=root" in argv and "msb.vol=msbvol1" in argv and "upper-placeholder" in argv


def test_template_spec_of_an_ephemeral_sandbox(boot: Path, tmp_path: Path) -> None:
    t = template_spec(spec(boot, network="group"), "ready", tmp_path / "b", tmp_path / "r")
    assert (t.upper_image, t.volumes, t.template_stage, t.network) == (None, (), None, "group")
    assert template_spec(spec(boot, network="none"), "ready", tmp_path, tmp_path).network == "none"


def test_resume_params(boot: Path, tmp_path: Path) -> None:
    assert resume_params(spec(boot, name="sb1", network="none")) == "msb.upper=tmpfs msb.hostname=sb1"
    assert resume_params(spec(boot, name="sb2", network="group")) == "msb.upper=tmpfs msb.hostname=sb2 msb.net=1"
    full = resume_params(spec(boot, name="x" * 70, upper_image=upper(tmp_path), volumes=vols(tmp_path, 2)))
    assert full == (
        f"msb.upper=/dev/vdb msb.sync=1 msb.hostname={'x' * 63} msb.net=1 msb.dns=10.0.2.3 "
        "msb.vol=msbvol0:ro:/data0 msb.vol=msbvol1:rw:/data1"
    )
    for word in ("msb.root", "msb.port", "msb.template"):  # the agent ignores these in RESUME anyway
        assert word not in full


# ---------------------------------------------------------------- store


def make(store: TemplateStore, key: str, *, memory_mib: int = 1, publish: bool = True) -> Template:
    """A small finished build of ``key`` (published unless told not to)."""
    d = store.new_build_dir(key)
    with open(d / "ram", "wb") as f:
        f.truncate(memory_mib << 20)
    (d / "state").write_bytes(b"device state")
    (d / "upper-placeholder").write_bytes(b"")
    tpl = Template(key=key, dir=d, stage="ready", memory_mib=memory_mib, build_ms=12.5, state_bytes=12,
                   agent_version="agent-1", ready_timings_ns={"ready": 5})  # fmt: skip
    return store.publish(d, tpl) if publish else tpl


def test_publish_is_a_rename_and_find_reads_it_back(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    published = make(store, "k1")
    final = tmp_path / "templates" / "k1"
    assert published.dir == final and published.ram == final / "ram" and published.state == final / "state"
    assert sorted(p.name for p in final.iterdir()) == ["meta.json", "ram", "state"]  # no placeholder left
    assert [p.name for p in store.root.iterdir()] == ["k1"]  # the build dir became it
    assert "dir" not in json.loads((final / "meta.json").read_text())
    assert store.find("k1") == published
    again = make(store, "k1", memory_mib=2)  # a rebuild replaces it
    assert store.find("k1") == again and again.memory_mib == 2


def test_find_of_an_unknown_key_is_none(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    assert store.find("nothing") is None
    assert not store.root.exists()


def _no_meta(d: Path) -> None:
    (d / "meta.json").unlink()


def _bad_json(d: Path) -> None:
    (d / "meta.json").write_text("{not json")


def _bad_field(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "stage": "halfway"}))


def _no_ram(d: Path) -> None:
    (d / "ram").unlink()


def _short_ram(d: Path) -> None:
    os.truncate(d / "ram", 4096)


def _no_state(d: Path) -> None:
    (d / "state").unlink()


def _empty_state(d: Path) -> None:
    (d / "state").write_bytes(b"")


def _other_key(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "key": "someone-else"}))


@pytest.mark.parametrize(
    "breaks", [_no_meta, _bad_json, _bad_field, _no_ram, _short_ram, _no_state, _empty_state, _other_key]
)
def test_find_removes_an_incomplete_or_mismatched_template(tmp_path: Path, breaks: object) -> None:
    store = TemplateStore(tmp_path)
    make(store, "keep")
    tpl = make(store, "k1")
    breaks(tpl.dir)  # type: ignore[operator]
    assert store.find("k1") is None
    assert not tpl.dir.exists()
    assert store.find("keep") is not None  # others are untouched


@pytest.mark.parametrize("meta", ["[]", '"text"', '{"dir": "/elsewhere", "key": "k1"}'])
def test_find_removes_a_template_whose_meta_is_not_a_template(tmp_path: Path, meta: str) -> None:
    store = TemplateStore(tmp_path)
    tpl = make(store, "k1")
    (tpl.dir / "meta.json").write_text(meta)
    assert store.find("k1") is None
    assert not tpl.dir.exists()


def test_find_marks_the_last_use(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    tpl = make(store, "k1")
    _age(tpl.dir, 3)
    assert store.find("k1") is not None
    assert store.cache.entries()[0].last_used > time.time() - DAY


def _age(d: Path, days: float) -> None:
    """Make ``d``'s last use ``days`` ago (its ``.use`` stamp, and the entry itself)."""
    when = time.time() - days * DAY
    for target in (d.with_name(d.name + ".use"), d):
        if target.exists():
            os.utime(target, (when, when))


def _full(store: TemplateStore, key: str, mib: int = 2) -> Template:
    """A published template of ``key`` with ``mib`` MiB of written (not sparse) RAM."""
    tpl = make(store, key, memory_mib=mib, publish=False)
    with open(tpl.ram, "r+b") as f:
        f.write(b"x" * (mib << 20))
    return store.publish(tpl.dir, tpl)


def _names(store: TemplateStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.is_dir())


def test_publish_prunes_templates_unused_for_a_week(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    for k in ("old", "recent"):
        make(store, k)
    (store.root / "old.lock").write_bytes(b"")
    _age(store.root / "old", TEMPLATE_MAX_AGE_S / DAY + 1)
    _age(store.root / "recent", TEMPLATE_MAX_AGE_S / DAY - 1)
    make(store, "new")
    assert _names(store) == ["new", "recent"]
    assert not (store.root / "old.lock").exists() and not (store.root / "old.use").exists()


def test_publish_evicts_the_least_recently_used_beyond_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TemplateStore(tmp_path)
    for i in range(4):
        _full(store, f"t{i}")
        _age(store.root / f"t{i}", 4 - i)  # t0 is the least recently used
    monkeypatch.setenv("MSB_TEMPLATE_CACHE_MIB", "5")
    store = TemplateStore(tmp_path)
    store.find("t1")  # a use: now the most recent
    _full(store, "newest")
    assert store.cache.usage().bytes <= 5 << 20
    assert _names(store) == ["newest", "t1"]


def test_a_leased_template_survives_eviction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSB_TEMPLATE_CACHE_MIB", "1")
    store = TemplateStore(tmp_path)
    _full(store, "running")
    lease = store.lease("running")
    assert lease is not None
    _age(store.root / "running", 3)
    _full(store, "other")
    assert "running" in _names(store)
    lease.release()
    store.prune(keep="other")
    assert _names(store) == ["other"]


def test_lease_of_an_evicted_template_is_none(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    make(store, "k1")
    assert store.cache.remove(store.root / "k1")
    assert store.lease("k1") is None and store.find("k1") is None


def test_publish_removes_stale_builds_only(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    stale = make(store, "stale", publish=False).dir
    running = make(store, "running", publish=False).dir
    _age(stale, 2 / 24)  # two hours: that build died
    make(store, "done")
    assert not stale.exists() and running.exists()
    assert sorted(p.name for p in store.root.iterdir() if p.is_dir()) == [running.name, "done"]
