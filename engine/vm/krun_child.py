"""The libkrun VMM process: ``python -m engine.vm.krun_child PLAN_FILE [LOG_LEVEL]``.

Loads libkrun, applies the plan written by :func:`engine.vm.krun.spawn` and calls
``krun_start_enter``, which on success never returns: this process becomes the VMM and exits
with the guest. Any failure before that is printed to stderr and exits with
:data:`EXIT_CONFIG`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import VmError
from engine.vm.krun import PlanAdapter, apply_plan
from engine.vm.krun_ffi import KrunLib

EXIT_CONFIG = 70
"""Exit status when libkrun could not be loaded or refused a call (``EX_SOFTWARE``)."""


def main(argv: list[str]) -> int:
    """Run the plan in ``argv[0]``; return only on failure."""
    try:
        plan = PlanAdapter.validate_json(Path(argv[0]).read_bytes())
        lib = KrunLib()
        lib.set_log_level(int(argv[1]) if len(argv) > 1 else 0)
        ctx = lib.create_ctx()
        apply_plan(ctx, plan)
        ctx.start_enter()
    except (VmError, OSError, ValueError) as e:  # ValueError: a malformed plan file
        print(f"msb-krun: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    print("msb-krun: krun_start_enter returned without an error", file=sys.stderr, flush=True)
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
