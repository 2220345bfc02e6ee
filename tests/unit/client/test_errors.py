"""engine.client.errors, and the SDK's import hygiene: it is a thin client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.client import errors
from engine.errors import MsbError

ROOT = Path(__file__).resolve().parents[3]


def test_every_sdk_error_is_a_sandbox_error_and_an_msb_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.SandboxError) and issubclass(obj, MsbError), name


def test_code_hint_and_message() -> None:
    err = errors.SandboxError("sandbox.stop failed: nope", code=-32602, hint="do this", data={"x": 1})
    assert err.code == -32602 and err.data == {"x": 1} and err.message == "sandbox.stop failed: nope"
    assert str(err) == "sandbox.stop failed: nope\n  hint: do this"
    assert errors.SandboxError("plain").code == errors.NO_CODE and str(errors.SandboxError("plain")) == "plain"


def test_timeout_error_is_also_the_builtin() -> None:
    assert issubclass(errors.SandboxTimeoutError, TimeoutError)


SCRIPT = """
import json, sys
import engine.client
print(json.dumps(sorted(m for m in sys.modules if m.startswith("engine."))))
"""


def test_client_imports_no_server_sandbox_vm_or_repl_code() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    outside = [m for m in loaded if not m.startswith("engine.client") and m != "engine.errors"]
    assert outside == [], f"engine.client pulled in {outside}"
