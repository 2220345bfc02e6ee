"""``python -m engine.vm.kernel``: show (or with ``--ensure`` fetch) the guest kernels."""

from __future__ import annotations

import sys

from engine.vm.kernel.resolve import main

if __name__ == "__main__":
    sys.exit(main())
