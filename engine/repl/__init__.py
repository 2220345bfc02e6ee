"""Persistent REPLs inside sandboxes: one long-lived interpreter per language per sandbox.

* :mod:`~engine.repl.pool` -- :class:`ReplPool`, the REPLs of one sandbox (``sandbox.repl.run``).
* :mod:`~engine.repl.session` -- :class:`ReplSession`, one interpreter: start, run, time out, restart.
* :mod:`~engine.repl.driver_process` -- a running driver as the host sees it (message routing).
* :mod:`~engine.repl.wire` -- the host<->driver JSON-lines protocol; :mod:`~engine.repl.output` -- lines, limits.
* :mod:`~engine.repl.host` -- the seam (``ReplHost``); :mod:`~engine.repl.local_host` -- host processes, for tests.
* ``drivers/`` -- ``python_driver.py`` and ``node_driver.js``, written into the guest and started
  when first needed, so any image with ``python3`` / ``node`` works.
"""
