"""ReplSession with the real Node.js driver, run on the host (engine/repl/session.py).

Skipped when the host has no ``node``."""

from __future__ import annotations

import time

import pytest

from engine.repl.session import ReplSession
from tests.unit.repl.conftest import needs_node
from tests.unit.repl.helpers import RESTARTS, run, stderr, stdout, text

pytestmark = needs_node


async def test_let_and_const_persist_and_value_is_echoed(node: ReplSession) -> None:
    assert await run(node, "let x = 41; const k = 'c'") == ("success", [])
    status, out = await run(node, "x + 1")
    assert (status, stdout(out)) == ("success", ["42"])
    assert stdout((await run(node, "x = 1; k"))[1]) == ["'c'"]


async def test_inspect_console_and_undefined(node: ReplSession) -> None:
    status, out = await run(node, "console.log('hi', 1); console.error('oops'); ({a: [1, 2]})")
    assert status == "success" and stdout(out) == ["hi 1", "{ a: [ 1, 2 ] }"] and stderr(out) == "oops"
    assert await run(node, "undefined") == ("success", [])
    assert await run(node, "function f() { return 3 }") == ("success", [])
    assert stdout((await run(node, "f()"))[1]) == ["3"]


async def test_require_works(node: ReplSession) -> None:
    status, out = await run(node, "const path = require('path'); path.join('a', 'b')")
    assert (status, stdout(out)) == ("success", ["'a/b'"])


async def test_exception_stack_on_stderr(node: ReplSession) -> None:
    status, out = await run(node, "function boom() { throw new TypeError('bad') }\nboom()")
    assert status == "error"
    err = stderr(out)
    assert err.startswith("TypeError: bad") and "at boom (REPL1:1" in err
    assert "node_driver" not in err and "repl-node" not in err and "node:vm" not in err


async def test_thrown_non_error(node: ReplSession) -> None:
    status, out = await run(node, "throw 42")
    assert status == "error" and stderr(out) == "Uncaught 42"


async def test_syntax_error(node: ReplSession) -> None:
    status, out = await run(node, "let = ;")
    assert status == "error" and "SyntaxError" in stderr(out)


async def test_promise_is_awaited(node: ReplSession) -> None:
    status, out = await run(node, "new Promise((resolve) => setTimeout(() => resolve('later'), 10))")
    assert (status, stdout(out)) == ("success", ["'later'"])
    status, out = await run(node, "Promise.reject(new Error('nope'))")
    assert status == "error" and stderr(out).startswith("Error: nope")


async def test_top_level_await_keeps_declarations(node: ReplSession) -> None:
    status, out = await run(node, "const v = await Promise.resolve(6); v * 7")
    assert (status, stdout(out)) == ("success", ["42"])
    assert stdout((await run(node, "v"))[1]) == ["6"]


async def test_child_process_output_is_captured(node: ReplSession) -> None:
    code = "require('child_process').execSync('echo out; echo err >&2', {stdio: 'inherit'}); undefined"
    status, out = await run(node, code)
    assert status == "success" and stdout(out) == ["out"] and stderr(out) == "err"


async def test_stdout_write_partial_line(node: ReplSession) -> None:
    status, out = await run(node, "process.stdout.write('no newline'); undefined")
    assert (status, stdout(out)) == ("success", ["no newline"])


async def test_timeout_interrupts_and_keeps_state(node: ReplSession) -> None:
    await run(node, "var kept = 'yes'")
    started = time.monotonic()
    status, out = await run(node, "console.log('started'); while (true) {}", timeout=0.5)
    assert time.monotonic() - started < 5
    assert status == "error" and stdout(out) == ["started"]
    assert "interrupted" in stderr(out)
    assert out[-1].text == "Execution timed out after 0.5 s; interrupted (interpreter state kept)"
    assert stdout((await run(node, "kept"))[1]) == ["'yes'"]


async def test_timeout_while_awaiting(node: ReplSession) -> None:
    status, out = await run(node, "new Promise(() => {})", timeout=0.3)
    assert status == "error" and "interrupted (interpreter state kept)" in out[-1].text
    assert stdout((await run(node, "'alive'"))[1]) == ["'alive'"]


async def test_uninterruptible_code_is_killed_and_restarted(node: ReplSession) -> None:
    await run(node, "var lost = 1")
    code = "require('child_process').execSync(\"trap '' INT; sleep 30\")"
    status, out = await run(node, code, timeout=0.3)
    assert status == "error" and "the interpreter was restarted; its state is lost" in out[-1].text
    status, out = await run(node, "lost")
    assert status == "error" and "ReferenceError" in stderr(out)


async def test_process_exit_is_an_error_and_restarts(node: ReplSession) -> None:
    await run(node, "var gone = 1")
    status, out = await run(node, "console.log('bye'); process.exit(4)")
    assert status == "error" and stdout(out) == ["bye"]
    assert out[-1].text == f"The node interpreter exited (status 4); {RESTARTS}"
    assert (await run(node, "gone"))[0] == "error"


async def test_async_errors_do_not_kill_the_interpreter(node: ReplSession) -> None:
    code = "var alive = 'yes'; setTimeout(() => { throw new Error('later') }, 0); Promise.reject(7);\n"
    code += "await new Promise((resolve) => setTimeout(resolve, 20))"
    status, out = await run(node, code)
    assert status == "success"
    assert "Uncaught Error: later" in stderr(out) and "Uncaught (in promise) 7" in text(out)
    assert stdout((await run(node, "alive"))[1]) == ["'yes'"]


async def test_huge_output_is_truncated(node: ReplSession) -> None:
    status, out = await run(node, "process.stdout.write('x'.repeat(20 << 20)); undefined")
    assert status == "success"
    assert sum(len(line.text) for line in out if line.stream == "stdout") == 8 << 20
    assert out[-1].text.startswith("[output truncated")
    assert stdout((await run(node, "'after'"))[1]) == ["'after'"]


@pytest.mark.parametrize("code", ["process.stdout.write = () => true; console.log('x'); 1", "process.stdin.read()"])
async def test_user_code_cannot_break_the_protocol(node: ReplSession, code: str) -> None:
    await run(node, code)
    assert stdout((await run(node, "'fine'"))[1])[-1] == "'fine'"


async def test_closed_stdout_does_not_hang_the_interpreter(node: ReplSession) -> None:
    assert (await run(node, "require('fs').closeSync(1)"))[0] == "success"
    assert (await run(node, "1"))[0] == "success"  # stdout is gone for good, but runs still finish
    status, out = await run(node, "console.error('still here')")
    assert (status, stderr(out)) == ("success", "still here")
