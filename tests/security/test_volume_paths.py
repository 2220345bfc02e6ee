"""Attack: a guest swaps a directory on a host path for a symlink between check and use.

Host code resolves volume paths (and anything else under a guest-writable directory) with
engine/vm/safepath.py: no symlink anywhere, ``..`` never leaves a directory, and the mount or
the child process gets the fd that was opened, not the path string.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sandbox.engine import Engine
from engine.sandbox.spec import SandboxSpec, VolumeMount
from engine.vm import safepath
from engine.vm.gvisor import reachable_by_others
from engine.vm.safepath import open_beneath, open_dir_nofollow


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with openat2 and with the fallback walk (kernels without openat2)."""
    if request.param == "walk":

        def no_openat2(*_: object) -> int:
            raise OSError(errno.ENOSYS, "no openat2")

        monkeypatch.setattr(safepath, "_openat2", no_openat2)
    return str(request.param)


def _same_dir(fd: int, path: Path) -> bool:
    st = os.fstat(fd)
    real = path.stat()
    return (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino)


def test_a_real_directory_opens(resolver: str, tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    fd = open_dir_nofollow(d)
    try:
        assert _same_dir(fd, d)
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_symlink_anywhere_is_refused_and_named(resolver: str, tmp_path: Path, where: str) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (tmp_path / "vol").mkdir()
    link = tmp_path / "vol" / "link"
    link.symlink_to(outside)
    path = link / "sub" if where == "middle" else link
    with pytest.raises(ConfigError) as info:
        os.close(open_dir_nofollow(path))
    assert str(link) in str(info.value) and "symlink" in str(info.value)


def test_dotdot_and_relative_paths_are_refused(resolver: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for bad in (tmp_path / "a" / ".." / "a", Path("relative/dir")):
        with pytest.raises(ConfigError):
            os.close(open_dir_nofollow(bad))


def test_magic_links_are_refused(resolver: str, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for magic in (Path(f"/proc/{os.getpid()}/fd/{fd}"), Path(f"/proc/{os.getpid()}/root"), Path("/proc/self")):
            with pytest.raises(ConfigError):
                os.close(open_dir_nofollow(magic))
    finally:
        os.close(fd)


def test_a_file_is_not_a_directory(resolver: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        os.close(open_dir_nofollow(tmp_path / "f"))


def test_swapped_after_the_check_the_fd_still_holds_the_checked_directory(resolver: str, tmp_path: Path) -> None:
    """The check and the use are one: once opened, a swap of the path changes nothing, and a
    second open of the swapped path is refused."""
    d, secret = tmp_path / "vol" / "sub", tmp_path / "secret"
    d.mkdir(parents=True)
    secret.mkdir()
    (secret / "key").write_text("s3cret")
    fd = open_dir_nofollow(d)
    try:
        d.rename(tmp_path / "vol" / "moved")
        d.symlink_to(secret)  # the guest's swap
        assert sorted(os.listdir(safepath.fd_path(fd))) == []  # still the checked (empty) directory
        with pytest.raises(ConfigError, match="symlink"):
            os.close(open_dir_nofollow(d))
    finally:
        os.close(fd)


def test_open_beneath_stays_beneath(resolver: str, tmp_path: Path) -> None:
    (tmp_path / "base" / "in").mkdir(parents=True)
    (tmp_path / "base" / "in" / "f").write_text("ok")
    (tmp_path / "secret").write_text("no")
    (tmp_path / "base" / "esc").symlink_to(tmp_path / "secret")
    (tmp_path / "base" / "dir-link").symlink_to(tmp_path / "base" / "in")
    base = os.open(tmp_path / "base", os.O_PATH | os.O_DIRECTORY)
    try:
        fd = open_beneath(base, "in/f", os.O_RDONLY)
        assert os.read(fd, 10) == b"ok"
        os.close(fd)
        for rel, errs in (("../secret", (errno.EXDEV,)), ("in/../../secret", (errno.EXDEV,)),
                          (str(tmp_path / "secret"), (errno.EXDEV,)), ("esc", (errno.ELOOP,)),
                          ("dir-link/f", (errno.ELOOP,))):  # fmt: skip
            with pytest.raises(OSError) as info:
                os.close(open_beneath(base, rel, os.O_RDONLY))
            assert info.value.errno in errs, (rel, info.value)
        with pytest.raises(OSError) as link_info:  # even O_PATH never hands out the link itself
            os.close(open_beneath(base, "esc", os.O_PATH))
        assert link_info.value.errno == errno.ELOOP
        new = open_beneath(base, "in/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(new)
        assert (tmp_path / "base" / "in" / "new").stat().st_mode & 0o777 == 0o640
    finally:
        os.close(base)


# --- against real sandboxes (gVisor: its gofer makes real symlinks and setuid files on the host) ---


@pytest.fixture
def busybox_rootfs() -> Path:
    from tests.integration.conftest import BUSYBOX

    if not (BUSYBOX / ".complete").exists():
        pytest.fail(f"{BUSYBOX} is missing: run `make setup` (scripts/build-test-rootfs.sh)")
    return BUSYBOX


def _gvisor_engine() -> Engine:
    from tests.integration.conftest import BACKENDS

    if "gvisor" not in BACKENDS or os.geteuid() != 0:
        pytest.skip("gVisor is not among MSB_TEST_BACKENDS, or not root")
    return Engine(backend="gvisor")


@pytest.mark.vm
async def test_a_volume_swapped_for_a_symlink_by_another_guest_is_refused(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _gvisor_engine()
    monkeypatch.setenv("MSB_GVISOR_RW_VOLUMES", "allow")  # A needs a read-write volume for the attack
    shared, secret = tmp_path / "shared", tmp_path / "secret"
    (shared / "sub").mkdir(parents=True)
    secret.mkdir()
    (secret / "key").write_text("s3cret")
    b_volume = VolumeMount(host=shared / "sub", guest="/data", readonly=True)  # validated now, used later
    a = await engine.start(SandboxSpec(name="swap-a-" + os.urandom(3).hex(), rootfs=busybox_rootfs,
                                       volumes=(VolumeMount(host=shared, guest="/shared"),)))  # fmt: skip
    try:
        res = await a.exec(["sh", "-c", f"mv /shared/sub /shared/old && ln -s {secret} /shared/sub"], timeout=60)
        assert res.exit_code == 0, res.stderr
    finally:
        await a.kill()
    assert (shared / "sub").is_symlink()  # the guest's swap reached the host
    with pytest.raises(ConfigError, match="symlink") as info:
        b = await engine.start(SandboxSpec(name="swap-b-" + os.urandom(3).hex(), rootfs=busybox_rootfs,
                                           volumes=(b_volume,)))  # fmt: skip
        try:  # only reached on a failure: show what B sees
            print((await b.exec(["ls", "-la", "/data"], timeout=60)).stdout.decode())
        finally:
            await b.kill()
    assert str(shared / "sub") in str(info.value)


@pytest.mark.vm
async def test_gvisor_rw_volume_cannot_plant_a_setuid_root_file_others_can_reach(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, gVisor's gofer would create the guest's setuid-root program for real: a read-write
    volume that other host users can reach is refused; one below a directory only root may
    enter starts, and what the guest plants there is out of every other user's reach."""
    engine = _gvisor_engine()
    monkeypatch.delenv("MSB_GVISOR_RW_VOLUMES", raising=False)
    open_dir = Path(tempfile.mkdtemp(prefix="msb-suid-", dir="/tmp"))
    try:
        os.chmod(open_dir, 0o755)  # like a project in /home/user: other users can walk in
        spec = SandboxSpec(name="suid-" + os.urandom(3).hex(), rootfs=busybox_rootfs,
                           volumes=(VolumeMount(host=open_dir, guest="/vol"),))  # fmt: skip
        try:
            sb = await engine.start(spec)
        except ConfigError as e:
            assert "read-only" in str(e) and "qemu" in str(e) and "MSB_GVISOR_RW_VOLUMES" in str(e)
        else:
            try:
                await sb.exec(["sh", "-c", "cp /bin/busybox /vol/x; chown 0:0 /vol/x; chmod 4755 /vol/x"], timeout=60)
            finally:
                await sb.kill()
            st = (open_dir / "x").stat()
            assert not (st.st_mode & stat.S_ISUID and st.st_uid == 0), oct(st.st_mode)
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
    closed = tmp_path / "closed"
    closed.mkdir()
    os.chmod(tmp_path.parent, 0o700)  # pytest's own base directory; only root may enter
    assert not reachable_by_others(closed)
    sb = await engine.start(spec.model_copy(update={"volumes": (VolumeMount(host=closed, guest="/vol"),)}))
    try:
        res = await sb.exec(["sh", "-c", "cp /bin/busybox /vol/x && chmod 4755 /vol/x"], timeout=60)
        assert res.exit_code == 0, res.stderr
    finally:
        await sb.kill()
    assert not reachable_by_others(closed / "x")
