"""ReplSession with the real Python driver, run on the host (engine/repl/session.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.errors import SandboxStateError
from engine.repl.local_host import LocalHost
from engine.repl.session import ReplSession
from tests.unit.helpers import eventually
from tests.unit.repl.helpers import RESTARTS, run, stderr, stdout, text


async def test_state_persists_and_last_expression_is_echoed(py: ReplSession) -> None:
    assert await run(py, "x = 41") == ("success", [])
    status, out = await run(py, "x + 1")
    assert (status, stdout(out)) == ("success", ["42"])


async def test_print_and_multi_statement_cells(py: ReplSession) -> None:
    status, out = await run(py, "for i in range(3):\n    print('line', i)\ny = {'a': [1, 2]}\ny")
    assert status == "success"
    assert stdout(out) == ["line 0", "line 1", "line 2", "{'a': [1, 2]}"]


async def test_none_is_not_echoed_and_repr_is_used(py: ReplSession) -> None:
    assert await run(py, "None") == ("success", [])
    assert stdout((await run(py, "'text'"))[1]) == ["'text'"]
    assert stdout((await run(py, "_"))[1]) == ["'text'"]  # displayhook sets _ like at >>>


async def test_exception_gives_a_traceback_on_stderr(py: ReplSession) -> None:
    status, out = await run(py, "def f():\n    return 1 / 0\nf()")
    assert status == "error"
    err = stderr(out)
    assert err.startswith("Traceback (most recent call last):")
    assert 'File "<cell-1>", line 3, in <module>' in err and "return 1 / 0" in err
    assert err.endswith("ZeroDivisionError: division by zero")
    assert "python_driver" not in err and "repl-python" not in err


async def test_syntax_error(py: ReplSession) -> None:
    status, out = await run(py, "def f(:\n  pass")
    assert status == "error"
    assert "SyntaxError" in stderr(out) and "Traceback" not in stderr(out)
    assert await run(py, "1") == ("success", [out[0].model_copy(update={"stream": "stdout", "text": "1"})])


async def test_exception_keeps_state_and_output_before_it(py: ReplSession) -> None:
    status, out = await run(py, "z = 5\nprint('before')\nraise ValueError('boom')")
    assert status == "error" and stdout(out) == ["before"] and "ValueError: boom" in stderr(out)
    assert stdout((await run(py, "z"))[1]) == ["5"]


async def test_fd_level_writes_and_subprocesses_are_captured(py: ReplSession) -> None:
    code = "import os, subprocess\nos.write(1, b'fd one\\n')\nos.write(2, b'fd two\\n')\n"
    code += "subprocess.run(['echo', 'child'])\nNone"
    status, out = await run(py, code)
    assert status == "success"
    assert stdout(out) == ["fd one", "child"] and stderr(out) == "fd two"


async def test_trailing_partial_line_and_order(py: ReplSession) -> None:
    # order across streams is best effort: the pauses let each write go out before the next
    code = "import sys, time\nfor s, t in [(1, 'a'), (2, 'e1'), (1, 'b')]:\n"
    code += "    print(t, file=[0, sys.stdout, sys.stderr][s])\n    time.sleep(0.02)\nsys.stdout.write('partial')"
    status, out = await run(py, code)
    assert status == "success"
    assert [(line.stream, line.text) for line in out] == [
        ("stdout", "a"), ("stderr", "e1"), ("stdout", "b"), ("stdout", "partial7"),
    ]  # fmt: skip


async def test_stdin_is_not_the_protocol(py: ReplSession) -> None:
    status, out = await run(py, "input()")
    assert status == "error" and "EOFError" in stderr(out)
    assert stdout((await run(py, "import sys; sys.stdin.read()"))[1]) == ["''"]


async def test_unicode_and_invalid_bytes(py: ReplSession) -> None:
    status, out = await run(py, "import os\nprint('héllo ✓')\nos.write(1, b'bad \\xff\\n')\nNone")
    assert status == "success" and stdout(out) == ["héllo ✓", "bad \ufffd"]


async def test_top_level_await(py: ReplSession) -> None:
    status, out = await run(py, "import asyncio\nawait asyncio.sleep(0)\n6 * 7")
    assert (status, stdout(out)) == ("success", ["42"])


async def test_timeout_interrupts_and_keeps_state(py: ReplSession) -> None:
    await run(py, "kept = 'yes'")
    started = time.monotonic()
    status, out = await run(py, "import time\nprint('started')\ntime.sleep(30)", timeout=0.5)
    assert time.monotonic() - started < 5
    assert status == "error" and stdout(out) == ["started"]
    assert "KeyboardInterrupt" in stderr(out)
    assert out[-1].text == "Execution timed out after 0.5 s; interrupted (interpreter state kept)"
    assert stdout((await run(py, "kept"))[1]) == ["'yes'"]


async def test_timed_out_run_does_not_leak_into_the_next(py: ReplSession) -> None:
    code = "import time\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n    print('cleanup of A')\n    raise"
    status, out = await run(py, code, timeout=0.3)
    assert status == "error" and "cleanup of A" in stdout(out)
    assert await run(py, "print('B')") == ("success", [out[0].model_copy(update={"text": "B"})])


async def test_uninterruptible_code_is_killed_and_restarted(py: ReplSession) -> None:
    await run(py, "lost = 1")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)"
    status, out = await run(py, code, timeout=0.3)
    assert status == "error"
    assert "the interpreter was restarted; its state is lost" in out[-1].text
    status, out = await run(py, "lost")
    assert status == "error" and "NameError" in stderr(out)
    assert stdout((await run(py, "1 + 1"))[1]) == ["2"]


async def test_interrupt_swallowed_in_a_loop_is_killed(py: ReplSession) -> None:
    code = "import time\nwhile True:\n    try:\n        time.sleep(30)\n    except KeyboardInterrupt:\n        pass"
    status, out = await run(py, code, timeout=0.3)
    assert status == "error" and "restarted" in out[-1].text
    assert stdout((await run(py, "'fresh'"))[1]) == ["'fresh'"]


async def test_interpreter_exit_is_an_error_and_restarts(py: ReplSession) -> None:
    await run(py, "gone = 1")
    status, out = await run(py, "import os; os._exit(3)")
    assert status == "error"
    assert out[-1].text == f"The python3 interpreter exited (status 3); {RESTARTS}"
    status, out = await run(py, "gone")
    assert status == "error" and "NameError" in stderr(out)


async def test_sys_exit_is_an_error_not_an_exit(py: ReplSession) -> None:
    await run(py, "still = 1")
    status, out = await run(py, "import sys; sys.exit(2)")
    assert status == "error" and "SystemExit: 2" in stderr(out)
    assert stdout((await run(py, "still"))[1]) == ["1"]


async def test_huge_output_is_truncated(py: ReplSession) -> None:
    status, out = await run(py, "import sys\nsys.stdout.write('x' * (20 << 20))\nNone")
    assert status == "success"
    assert sum(len(line.text) for line in out if line.stream == "stdout") == 8 << 20
    assert out[-1].stream == "stderr" and out[-1].text.startswith("[output truncated")
    assert stdout((await run(py, "'after'"))[1]) == ["'after'"]


async def test_many_lines_are_capped(py: ReplSession) -> None:
    status, out = await run(py, "print('\\n' * 300_000)")
    assert status == "success" and len(out) == 100_001 and out[-1].text.startswith("[output truncated")


async def test_concurrent_runs_are_serialised(py: ReplSession) -> None:
    await run(py, "import time\nlog = []")
    code = "log.append('start {0}'); time.sleep(0.05); log.append('end {0}')"
    await asyncio.gather(*(run(py, code.format(i)) for i in range(3)))
    log = eval(text((await run(py, "log"))[1])[0])
    assert [entry.split()[0] for entry in log] == ["start", "end"] * 3


async def test_exit_between_calls_is_noted(py: ReplSession, host: LocalHost) -> None:
    code = "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.1), os._exit(0))).start()"
    assert (await run(py, code))[0] == "success"
    await eventually(lambda: host.processes[0].exited)
    status, out = await run(py, "'new'")
    assert status == "success" and stdout(out) == ["'new'"]
    assert "had exited since the last call" in stderr(out)


async def test_closed_session_refuses(py: ReplSession, host: LocalHost) -> None:
    await run(py, "1")
    await py.close()
    proc = host.processes[0]
    async with asyncio.timeout(5):
        while await proc.read() is not None:
            pass
    with pytest.raises(SandboxStateError, match="closed"):
        await py.run("1")


@pytest.mark.parametrize("sabotage", ["os.close(1); os.close(2)", "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)"])
async def test_closed_or_redirected_fds_are_captured_again(py: ReplSession, sabotage: str) -> None:
    assert (await run(py, f"import os; {sabotage}"))[0] == "success"
    status, out = await run(py, "print('back'); 1 / 0")
    assert status == "error" and stdout(out) == ["back"] and "ZeroDivisionError" in stderr(out)
