"""Starting project sandboxes with their dependencies (shared by ``msb run`` and msb-tui)."""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import ConfigError
from engine.images.progress import NO_PROGRESS, Progress
from engine.images.resolve import ResolvedRoot, resolve_root
from engine.project.runtime import Project, SandboxState, launch
from engine.project.sandboxfile import SandboxEntry
from engine.project.specs import command_for, spec_overrides


def check(project: Project, name: str) -> tuple[list[str], dict[str, SandboxEntry]]:
    """Validate ``name`` and everything it depends on before anything starts.

    Returns:
        The start order (dependencies first, ``name`` last) and the entries by name.

    Raises:
        ConfigError: unknown sandbox, dependency cycle, no image, bad volume/port/env.
    """
    sbf = project.sandboxfile
    if sbf.get(name) is None:
        defined = ", ".join(sbf.names()) or "none"
        raise ConfigError(f"{project.path}: no sandbox named {name!r} (defined: {defined})",
                          hint=f"add it with `msb add {name} --image IMAGE`")  # fmt: skip
    order = sbf.start_order([name])
    entries: dict[str, SandboxEntry] = {}
    for n in order:
        entry = sbf.get(n)
        assert entry is not None  # start_order checked the names
        if not entry.image:
            raise ConfigError(f"{project.path}: sandbox {n!r} has no image", hint=f"set sandboxes.{n}.image")
        spec_overrides(entry, project.dir)
        entries[n] = entry
    return order, entries


async def resolve_all(project: Project, entries: dict[str, SandboxEntry],
                      progress: Progress = NO_PROGRESS) -> dict[str, ResolvedRoot]:  # fmt: skip
    """Pull/build/unpack each entry's image (cached after the first time)."""
    roots = {}
    for n, entry in entries.items():
        assert entry.image is not None
        roots[n] = await resolve_root(entry.image, base_dir=project.dir, progress=progress)
    return roots


def start_script(entry: SandboxEntry, root: ResolvedRoot) -> list[str] | None:
    """The command a background start runs: ``scripts.start``, or ``None`` (stay up idle)."""
    return command_for(entry, root.defaults, "start", []) if "start" in entry.scripts else None


async def start_dependencies(project: Project, order: list[str], entries: dict[str, SandboxEntry],
                             roots: dict[str, ResolvedRoot],
                             on_started: Callable[[str], None] | None = None, *,
                             backend: str | None = None) -> None:  # fmt: skip
    """Start every dependency in ``order[:-1]`` that is not running, in the background
    (on ``backend`` if given, else each on its own ``backend:`` / the default)."""
    for dep in order[:-1]:
        if not project.sandbox_dir(dep).alive():
            await launch(project, dep, start_script(entries[dep], roots[dep]), backend=backend)
            if on_started is not None:
                on_started(dep)


async def start_in_background(project: Project, name: str, progress: Progress = NO_PROGRESS,
                              on_started: Callable[[str], None] | None = None, *,
                              keep_alive: bool = False, backend: str | None = None) -> SandboxState:  # fmt: skip
    """Start ``name`` (and its dependencies) in the background running ``scripts.start``, or
    idle without one. Already running → its state, unchanged. With ``keep_alive`` the
    sandbox stays up after the start script ends (msb-tui: a started sandbox is one you can
    open shells and REPLs in). ``backend`` (``auto`` or a name) overrides the entries' ``backend:``.

    Raises:
        ConfigError: see :func:`check`. StartError: the VM did not come up.
    """
    order, entries = check(project, name)
    sdir = project.sandbox_dir(name)
    if sdir.alive():
        return sdir.state()
    roots = await resolve_all(project, entries, progress)
    await start_dependencies(project, order, entries, roots, on_started, backend=backend)
    return await launch(project, name, start_script(entries[name], roots[name]), keep_alive=keep_alive,
                        backend=backend)  # fmt: skip
