"""The image commands as a user runs them: build, list, run, export, import, remove."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import paths

MSB = [sys.executable, "-m", "engine.cli.main"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private image store and state dir; kernels, the agent and the network filter come from the real cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real = paths.cache_dir()
    for name in ("kernel", "agent", "netfilter", "initramfs", "accel.json"):
        if (real / name).exists():
            (cache / name).symlink_to(real / name)
    return {**os.environ, "MSB_CACHE_DIR": str(cache), "MSB_STORAGE_PATH": str(tmp_path / "state"),
            "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}  # fmt: skip


def msb(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*MSB, *args], env=env, capture_output=True, text=True, timeout=180)
    if ok:
        assert res.returncode == 0, f"msb {' '.join(args)}: {res.stderr}"
    return res


def test_build_list_run_export_import_rmi(env: dict[str, str], tmp_path: Path) -> None:
    built = msb(env, "image", "build", "busybox")
    assert "built busybox:latest" in built.stdout
    [img] = json.loads(msb(env, "images", "--json").stdout)
    assert img["name"] == "docker.io/library/busybox:latest" and img["source"] == "build"
    table = msb(env, "images").stdout.splitlines()
    assert table[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"] and table[1].split()[:2] == ["busybox", "latest"]

    run = msb(env, "exe", "-q", "busybox", "--", "sh", "-c", "cat /etc/passwd | head -1; echo $PATH")
    assert run.stdout.splitlines()[0].startswith("root:x:0:0")

    msb(env, "image", "export", "busybox", "-o", str(tmp_path / "bb.tar"))
    msb(env, "rmi", "busybox")
    assert json.loads(msb(env, "images", "--json").stdout) == []
    assert not list((Path(env["MSB_CACHE_DIR"]) / "images" / "blobs" / "sha256").iterdir())
    imported = msb(env, "image", "import", str(tmp_path / "bb.tar"))
    assert "imported busybox:latest" in imported.stdout
    assert msb(env, "exe", "-q", "busybox", "--", "true").returncode == 0


def test_errors_say_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    bad = msb(env, "pull", "Not/Valid", ok=False)
    assert bad.returncode == 1 and "lowercase" in bad.stderr and "Traceback" not in bad.stderr
    missing = msb(env, "rmi", "nothing:here", ok=False)
    assert missing.returncode == 1 and "msb images" in missing.stderr
    refused = msb(env, "pull", "127.0.0.1:9/x", ok=False)
    assert "connection refused" in refused.stderr
    not_layout = msb(env, "image", "import", str(tmp_path), ok=False)
    assert "not an OCI image layout" in not_layout.stderr
