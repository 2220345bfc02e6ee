"""ReplPool: languages, aliases, one session per language (engine/repl/pool.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.errors import ConfigError, SandboxStateError
from engine.repl.local_host import LocalHost
from engine.repl.models import ReplResult
from engine.repl.pool import ReplPool
from tests.unit.repl.conftest import needs_node


@pytest.fixture
async def pool(host: LocalHost) -> AsyncIterator[ReplPool]:
    pool = ReplPool(host)
    yield pool
    await pool.close()


async def test_python_result_and_state(pool: ReplPool) -> None:
    assert await pool.run("python", "x = 41") == ReplResult(status="success", language="python", output=[])
    result = await pool.run("Python", "x + 1")
    assert result.language == "Python" and [line.text for line in result.output] == ["42"]


@needs_node
@pytest.mark.parametrize("alias", ["node", "nodejs", "javascript"])
async def test_node_aliases_share_one_interpreter(pool: ReplPool, alias: str) -> None:
    await pool.run("nodejs", "var shared = 'one'")
    result = await pool.run(alias, "shared")
    assert result.language == alias and result.status == "success"
    assert [line.text for line in result.output] == ["'one'"]


async def test_unknown_language_lists_the_valid_ones(pool: ReplPool) -> None:
    with pytest.raises(ConfigError, match="unknown REPL language 'ruby'") as err:
        await pool.run("ruby", "1")
    assert err.value.hint == "use one of: javascript, node, nodejs, python"


async def test_errors_and_timeouts_are_results(pool: ReplPool) -> None:
    result = await pool.run("python", "import time; time.sleep(30)", timeout=0.3)
    assert result.status == "error" and "timed out" in result.output[-1].text
    with pytest.raises(ConfigError, match="positive"):
        await pool.run("python", "1", timeout=0)


async def test_closed_pool_refuses(pool: ReplPool, host: LocalHost) -> None:
    await pool.run("python", "1")
    await pool.close()
    with pytest.raises(SandboxStateError):
        await pool.run("python", "1")
