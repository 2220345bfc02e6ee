"""Watching the Sandboxfile for changes on disk (watchfiles), for the editor screen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

from watchfiles import awatch


async def file_changes(path: Path, ready: asyncio.Event, *, debounce_ms: int = 400) -> AsyncGenerator[None, None]:
    """Yield once per batch of changes to the file ``path``: written, replaced (an atomic
    save renames a temporary file over it), created or deleted.

    The directory is watched, not the file, so a replaced or re-created file is still seen.
    Close the generator (``contextlib.aclosing``) to stop; its thread then ends within 50 ms.

    Args:
        path: the file.
        ready: set once the watcher runs; changes made after that are reported.
        debounce_ms: the longest a burst of changes is gathered into one batch.
    """
    stop = asyncio.Event()
    changes = awatch(path.parent, watch_filter=lambda _change, changed: Path(changed).name == path.name,
                     recursive=False, debounce=debounce_ms, step=50, stop_event=stop)  # fmt: skip
    # awatch makes its watcher when the generator first runs: start it, then say we watch.
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)
    ready.set()
    try:
        while True:
            try:
                await pending
            except StopAsyncIteration:
                return
            yield
            pending = asyncio.ensure_future(anext(changes))
    finally:
        stop.set()
        pending.cancel()
