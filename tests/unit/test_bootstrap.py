"""Every external program the code runs is installed by ``scripts/bootstrap.sh`` or comes with
Debian, so that ``make run`` and ``make test`` work on a fresh Debian 12 machine.

A fresh machine once stopped in setup with "depmod is not installed": the code ran a program
that bootstrap did not install and the development machines happened to have. This test finds
the programs by reading the code (:mod:`tests.support.programs`: an AST walk over the Python
files, the first word of each command in the shell scripts and Makefiles) and checks each
against what bootstrap installs (its ``NEED`` table, the packages it checks with ``dpkg -s``, the
kernel build's dependencies, what it builds) and a short allow-list of what every Debian install
has (Essential/required packages), each with its reason.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.programs import PROGRAM, Found, makefile_programs, python_programs, shell_programs

ROOT = Path(__file__).resolve().parents[2]
PY_DIRS = ("engine", "msb_tui", "scripts", "tests", "bench")
SHELL_FILES = ("scripts/bootstrap.sh", "scripts/build-kernel.sh", "scripts/build-test-rootfs.sh", ".ci/run")
MAKEFILES = ("Makefile", "engine/guest/agent/Makefile", "engine/vm/netfilter/Makefile")

# Debian 12 installs these on every system: Essential or Priority "required" packages, which
# debootstrap's minbase (the smallest install) contains. Anything else needs an install step.
_ESSENTIAL = {
    "coreutils (Essential)": "basename cat chmod chown chroot cp cut date dirname echo env head id install ln "
    "ls mkdir mktemp mv nproc printf readlink rm rmdir sha256sum sleep sort stat tail touch tr true "
    "false uname wc",
    "util-linux (Essential)": "flock nsenter unshare",
    "dash (Essential)": "sh",
    "bash (Essential)": "bash",
    "grep (Essential)": "grep",
    "sed (Essential)": "sed",
    "tar (Essential)": "tar",
    "gzip (Essential)": "gzip",
    "findutils (Essential)": "find xargs",
    "diffutils (Essential)": "diff cmp",
    "dpkg (Essential)": "dpkg dpkg-deb dpkg-query",
    "libc-bin (Essential)": "ldconfig ldd",
    "hostname (Essential)": "hostname",
    "perl-base (Essential)": "perl",
    "apt (required): bootstrap itself installs packages with it": "apt-get apt-cache",
    "passwd (required)": "useradd",
    "sudo: the README asks for root or a sudoer; bootstrap uses sudo only when not root": "sudo",
}
BASE_DEBIAN: dict[str, str] = {prog: why for why, progs in _ESSENTIAL.items() for prog in progs.split()}

# Programs the code looks for but does without, or that a test creates itself.
OPTIONAL = {
    "node": "local (host) REPL unit tests skip without it (tests/unit/repl/conftest.py)",
    "bbx": "an alias the `msb install` integration test creates itself",
}

# Programs a package in bootstrap's list provides besides the NEED table's keys.
PROVIDES = {"python3-venv": ("python3",), "busybox-static": ("busybox",), "gcc": ("cc",)}

# ---------------------------------------------------------------------------------- bootstrap


def need_table(bootstrap: str) -> dict[str, str]:
    """Bootstrap's ``NEED`` table: binary -> the Debian package that provides it."""
    match = re.search(r"declare -A NEED=\((.*?)\n\)", bootstrap, flags=re.S)
    assert match, "scripts/bootstrap.sh has no `declare -A NEED=( … )` table"
    return dict(re.findall(r"^\s*\[([^\]]+)\]=(\S+)", match.group(1), flags=re.M))


def bootstrap_installs(bootstrap: str, build_kernel: str, pyproject: str) -> dict[str, str]:
    """Every program bootstrap makes available -> how (package, build step)."""
    out = {b: f"apt package {p} (NEED)" for b, p in need_table(bootstrap).items()}
    packages = set(need_table(bootstrap).values()) | set(re.findall(r"missing\+=\(([\w.+-]+)\)", bootstrap))
    for pkg in packages:
        out |= {prog: f"apt package {pkg}" for prog in PROVIDES.get(pkg, ())}
    if "scripts/build-kernel.sh" in bootstrap:
        pairs = re.search(r"for pair in (.*?); do", build_kernel, flags=re.S)
        assert pairs, "scripts/build-kernel.sh: no `for pair in bin:pkg …; do` list of build dependencies"
        out |= {b: f"apt package {p} (the kernel build)" for b, p in (w.split(":") for w in pairs.group(1).split()
                                                                    if ":" in w)}  # fmt: skip
    if "engine.vm.runsc --ensure" in bootstrap:
        out["runsc"] = "fetched by bootstrap (python -m engine.vm.runsc --ensure)"
    for script in tomllib.loads(pyproject)["project"]["scripts"]:
        out[script] = "installed into .venv by bootstrap (pyproject [project.scripts])"
    return out


@functools.cache
def all_programs() -> Found:
    """Every program this repository's code runs, with where."""
    found: Found = {}

    def add(more: Found) -> None:
        for prog, where in more.items():
            found.setdefault(prog, []).extend(where)

    for top in PY_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            add(python_programs(path.read_text(), str(path.relative_to(ROOT))))
    for rel in SHELL_FILES:
        add(shell_programs((ROOT / rel).read_text(), rel))
    for rel in MAKEFILES:
        add(makefile_programs((ROOT / rel).read_text(), rel))
    return found


def unaccounted(found: Found, installs: Iterable[str]) -> Found:
    """The programs neither installed by bootstrap, nor in every Debian, nor optional."""
    known = set(installs) | set(BASE_DEBIAN) | set(OPTIONAL)
    return {p: w for p, w in found.items() if p not in known}


def _installs() -> dict[str, str]:
    return bootstrap_installs((ROOT / "scripts/bootstrap.sh").read_text(),
                              (ROOT / "scripts/build-kernel.sh").read_text(),
                              (ROOT / "pyproject.toml").read_text())  # fmt: skip


# ---------------------------------------------------------------------------------- tests


def test_every_program_the_code_runs_is_installed_by_bootstrap_or_debian() -> None:
    found = all_programs()
    assert {"qemu-system-x86_64", "mkfs.ext4", "depmod", "skopeo", "runsc", "apt-get", "make"} <= found.keys()
    missing = unaccounted(found, _installs())
    assert not missing, "programs the code runs that a fresh Debian 12 lacks (add them to NEED in " \
        "scripts/bootstrap.sh, or to BASE_DEBIAN/OPTIONAL here with the reason):\n" + \
        "\n".join(f"  {p}: {', '.join(w[:3])}" for p, w in sorted(missing.items()))  # fmt: skip


def test_the_allow_lists_are_still_used() -> None:
    """An optional program nobody runs any more is a stale excuse: drop it."""
    assert set(OPTIONAL) <= all_programs().keys()


def test_a_new_program_without_an_install_step_fails() -> None:
    """The check bites: programs added to code in each way it reads are reported."""
    source = """
import asyncio, os, shutil, subprocess
from subprocess import check_output as co
TOOL = "tool-d"
def _run(argv, *, cwd=None):
    return subprocess.run(list(argv), cwd=cwd)
async def f(path):
    subprocess.run(["tool-a", "--x"])
    shutil.which("tool-b")
    await asyncio.create_subprocess_exec("tool-c", "-v")
    os.execvp(TOOL, [TOOL])
    co(["/usr/local/bin/tool-e"])
    for t in ("tool-f", "tool-g"):
        shutil.which(t)
    _run(["tool-h", "install"])
    argv = ["tool-i", str(path)]
    await asyncio.create_subprocess_exec(*argv)
    os.system("tool-j --all")
    subprocess.run(["qemu-system-x86_64", "--version"])  # installed: not reported
"""
    found = python_programs(source, "new.py")
    expected = {f"tool-{c}" for c in "abcdefghij"}
    assert set(unaccounted(found, _installs())) == expected
    script = 'set -e\nsay() { echo "$*"; }\n[[ -x x ]] || frob --go "a; b (c)"\nX=$(quux -q | tac)\n' \
        'cat <<EOF\nnot-a-command here\nEOF\n$SUDO apt-get install -y thing\nsay "zap; zip"\n'  # fmt: skip
    assert set(unaccounted(shell_programs(script, "new.sh"), _installs())) == {"frob", "quux", "tac"}
    assert "gcc-new" in makefile_programs("x:\n\t@gcc-new -o $(OUT)/a $(SRCS)\n", "Makefile")


def test_the_fresh_machines_depmod_failure_is_caught() -> None:
    """The bootstrap of before (no ``[depmod]=kmod``) fails this test: a fresh machine stopped there."""
    before = re.sub(r"^\s*\[depmod\]=kmod.*\n", "", (ROOT / "scripts/bootstrap.sh").read_text(), flags=re.M)
    installs = bootstrap_installs(before, (ROOT / "scripts/build-kernel.sh").read_text(),
                                  (ROOT / "pyproject.toml").read_text())  # fmt: skip
    assert "depmod" in unaccounted(all_programs(), installs)


def test_the_need_table_names_real_debian_packages() -> None:
    """Each ``binary -> package`` is well-formed (Debian policy 5.6.1: lowercase letters, digits,
    ``+ - .``, at least two characters, starting alphanumerically), and where the binary is on this
    host, dpkg says that very package provides it (a wrong name fails on a fresh machine only)."""
    table = need_table((ROOT / "scripts/bootstrap.sh").read_text())
    assert table["depmod"] == "kmod"
    for binary, package in table.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", package), f"{binary} -> {package!r}: not a Debian package name"
        assert PROGRAM.match(binary), f"{binary!r}: not a program name"
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian host: dpkg-query is missing")
    here = {b: p for b in table if (p := shutil.which(b) or _in_sbin(b))}
    owners = _dpkg_owners([v for p in here.values() for v in (p, p.removeprefix("/usr"))])  # merged /usr
    for binary, path in here.items():
        said = owners.get(path, set()) | owners.get(path.removeprefix("/usr"), set())
        assert table[binary] in said, f"NEED says {binary} comes from {table[binary]}, dpkg says {said or 'nothing'}"


def test_the_base_allow_list_is_debians_essential_set() -> None:
    """Each program allowed as "in every Debian" comes from the package named, and that package is
    Essential or of Priority required here (so a minimal install has it)."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian host: dpkg-query is missing")
    claimed = {prog: why.split()[0] for prog, why in BASE_DEBIAN.items() if "Essential" in why or "required" in why}
    here = {prog: p for prog in claimed if (p := shutil.which(prog) or _in_sbin(prog))}
    owners = _dpkg_owners([v for p in here.values() for v in (p, p.removeprefix("/usr"))])
    for prog, path in here.items():
        said = owners.get(path, set()) | owners.get(path.removeprefix("/usr"), set())
        assert claimed[prog] in said or not said, f"{prog}: said to come from {claimed[prog]}, dpkg says {said}"
    for package in set(claimed.values()):
        fields = subprocess.run(["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
                                capture_output=True, text=True, timeout=30).stdout.split()  # fmt: skip
        assert fields[:1] == ["yes"] or "required" in fields, f"{package}: {fields} is not in every Debian"


def _in_sbin(binary: str) -> str | None:
    return next((p for d in ("/usr/sbin", "/sbin") if Path(p := f"{d}/{binary}").exists()), None)


def _dpkg_owners(paths: list[str]) -> dict[str, set[str]]:
    """path -> the packages dpkg says ship it (one ``dpkg-query -S`` for all: each call reads every list)."""
    out = subprocess.run(["dpkg-query", "-S", *paths], capture_output=True, text=True, timeout=60).stdout
    owners: dict[str, set[str]] = {}
    for line in out.splitlines():
        packages, _, path = line.partition(": ")
        owners.setdefault(path.strip(), set()).update(p.strip().split(":")[0] for p in packages.split(","))
    return owners


def test_bootstrap_builds_the_minimal_kernel() -> None:
    """The suite's minimal-kernel tests and volumes under QEMU (9p) need it: setup builds it."""
    assert "scripts/build-kernel.sh" in (ROOT / "scripts/bootstrap.sh").read_text()


def test_ci_runs_exactly_the_readmes_commands() -> None:
    """CI must fail whenever the README's quick start would: no step of its own before it."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick, flags=re.S)
    assert block
    readme_cmds = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    ci = (ROOT / ".ci/run").read_text()
    steps = [line.strip() for line in ci.splitlines()
             if line.strip() and not line.lstrip().startswith("#")
             and not re.match(r"(set -euo pipefail|cd |export \w+=)", line.strip())]  # fmt: skip
    assert steps == [c for c in readme_cmds if c.startswith("make test")]
