"""The README's quick start, run as a new user types it: the commands are read from README.md
itself, so the README cannot drift from what works.

- "Then run a command in a throwaway sandbox": every line of that block, in order, from the
  repository root (the interactive shell gets its input on stdin);
- "The server (for AI agents)": `msb server start --detach`, a key from `msb server keygen`,
  then the README's Python snippet with that key, then `msb server stop`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TIMEOUT_S = 300

pytestmark = pytest.mark.vm


def block_after(marker: str, lang: str) -> str:
    """The first fenced ``lang`` block after ``marker`` in the README."""
    start = README.index(marker)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert m is not None, f"no ```{lang} block after {marker!r} in README.md"
    return m.group(1)


def commands(block: str) -> list[tuple[str, str]]:
    """``(command, comment)`` of each line of a shell block."""
    out = []
    for line in block.splitlines():
        cmd, _, comment = line.partition("  #")
        if cmd.strip():
            out.append((cmd.strip(), comment.strip()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sh(cmd: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip


def image_in_store(name: str, env: dict[str, str]) -> bool:
    listed = sh(".venv/bin/msb images", env)
    return listed.returncode == 0 and any(line.split()[:1] == [name] for line in listed.stdout.splitlines())


def test_the_throwaway_sandbox_commands(base_images: None, tmp_path: Path) -> None:
    env = {**os.environ, "MSB_STORAGE_PATH": str(tmp_path / "state")}
    seen = []
    for cmd, comment in commands(block_after("Then run a command in a throwaway sandbox", "sh")):
        image = re.search(r"image build (\S+)", cmd)
        if image and image.group(1) != "busybox" and image_in_store(image.group(1), env):
            continue  # built already (tests/integration/test_build_python.py builds it): same command, 45 s saved
        interactive = "interactive" in comment
        res = sh(cmd, env, stdin="echo typed-in-the-shell; exit 3\n" if interactive else "")
        if interactive:
            assert res.returncode == 3 and "typed-in-the-shell" in res.stdout, (cmd, res.stdout, res.stderr)
        else:
            assert res.returncode == 0, (cmd, res.stdout, res.stderr)
        seen.append(res.stdout)
    text = "".join(seen)
    assert "hello from " in text and "42" in text.split()


def test_the_server_and_the_sdk_snippet(base_images: None, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MSB_STORAGE_PATH": str(tmp_path / "state"), "MSB_PORT": str(port),
           "MSB_SERVER_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    env.pop("MSB_API_KEY", None)
    shell = commands(block_after("## The server (for AI agents)", "sh"))
    start, keygen = shell[0][0], shell[1][0]
    assert "server start --detach" in start and "keygen" in keygen
    res = sh(start, env)
    assert res.returncode == 0, res.stderr
    try:
        key_cmd = keygen.removeprefix("export MSB_API_KEY=$(").removesuffix(")")
        key = sh(key_cmd, env)
        assert key.returncode == 0 and key.stdout.startswith("msb_"), key.stderr
        env["MSB_API_KEY"] = key.stdout.strip()
        snippet = block_after("## The server (for AI agents)", "python")
        code = "import asyncio\n" + "async def main():\n" + "".join(
            f"    {line}\n" for line in snippet.splitlines()) + "asyncio.run(main())\n"  # fmt: skip
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=TIMEOUT_S)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["42", "0"], run.stdout
    finally:
        stop = sh(".venv/bin/msb server stop", env)
        assert stop.returncode == 0, stop.stderr
