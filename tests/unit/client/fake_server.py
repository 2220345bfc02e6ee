"""An in-memory msb server for the SDK tests: the five ``/api/v1/rpc`` methods behind an
``httpx.MockTransport``.

It checks request shapes as strictly as the real server (required and unknown params answer
``-32602``), records every call, and runs "REPL" code with Python's ``eval``/``exec`` in a
per-sandbox dict — a stand-in good enough for ``x = 41`` / ``x + 1``.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

RPC_URL_PATH = "/api/v1/rpc"

# method -> (required params, optional params)
SHAPES: dict[str, tuple[set[str], set[str]]] = {
    "sandbox.start": ({"sandbox", "namespace"}, {"config"}),
    "sandbox.stop": ({"sandbox", "namespace"}, set()),
    "sandbox.repl.run": ({"sandbox", "namespace", "language", "code"}, {"timeout"}),
    "sandbox.command.run": ({"sandbox", "namespace", "command"}, {"args", "timeout"}),
    "sandbox.metrics.get": ({"namespace"}, {"sandbox"}),
}
CONFIG_KEYS = {"image", "memory", "cpus", "volumes", "ports", "envs", "workdir", "shell", "scripts", "exec"}
CONFIG_KEYS |= {"ephemeral"}  # msb's addition
LANGUAGES = {"python", "node", "nodejs", "javascript"}


class RpcFault(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


@dataclass
class Call:
    """One request the fake received."""

    method: str
    params: dict[str, Any]
    headers: httpx.Headers
    url: str
    timeout: dict[str, float | None]
    """httpx's per-request timeout extension: connect/read/write/pool seconds."""


@dataclass
class FakeSandbox:
    config: dict[str, Any]
    globals: dict[str, Any] = field(default_factory=dict)


class FakeMsbServer:
    """The fake. ``api_key=None`` behaves like ``msb server start --dev`` (no auth)."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.calls: list[Call] = []
        self.sandboxes: dict[tuple[str, str], FakeSandbox] = {}
        self.faults: dict[str, RpcFault] = {}
        """Method -> the error to answer it with (instead of doing it)."""
        self.extra_metrics: list[dict[str, Any]] = []
        """Entries ``sandbox.metrics.get`` adds to its answer, as a sloppy server might."""

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport())

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == RPC_URL_PATH, request.url
        doc = json.loads(request.content)
        assert doc["jsonrpc"] == "2.0" and isinstance(doc["id"], (str, int)), doc
        self.calls.append(
            Call(
                doc["method"],
                doc.get("params", {}),
                request.headers,
                str(request.url),
                dict(request.extensions.get("timeout", {})),
            )
        )
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            body = {
                "jsonrpc": "2.0",
                "id": doc["id"],
                "error": {"code": -32001, "message": "Invalid or missing API key"},
            }
            return httpx.Response(401, json=body)
        try:
            result = self._dispatch(doc["method"], doc.get("params", {}))
        except RpcFault as fault:
            err: dict[str, Any] = {"code": fault.code, "message": fault.message}
            if fault.data is not None:
                err["data"] = fault.data
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": doc["id"], "error": err})
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": doc["id"], "result": result})

    def _dispatch(self, method: str, params: dict[str, Any]) -> Any:
        if method not in SHAPES:
            raise RpcFault(-32601, f"Method not found: {method}")
        required, optional = SHAPES[method]
        if missing := required - params.keys():
            raise RpcFault(-32602, f"Invalid params: missing {sorted(missing)}")
        if unknown := params.keys() - required - optional:
            raise RpcFault(-32602, f"Invalid params: unknown {sorted(unknown)}")
        if method in self.faults:
            raise self.faults[method]
        handler = {
            "sandbox.start": self._start,
            "sandbox.stop": self._stop,
            "sandbox.repl.run": self._repl,
            "sandbox.command.run": self._command,
            "sandbox.metrics.get": self._metrics,
        }[method]
        return handler(params)

    def _get(self, params: dict[str, Any]) -> FakeSandbox:
        key = (params["namespace"], params["sandbox"])
        if key not in self.sandboxes:
            raise RpcFault(-32602, f"Invalid params: Sandbox '{params['sandbox']}' not found")
        return self.sandboxes[key]

    def _start(self, params: dict[str, Any]) -> str:
        config = params.get("config") or {}
        if unknown := config.keys() - CONFIG_KEYS:
            raise RpcFault(-32602, f"Invalid params: config: unknown {sorted(unknown)}")
        self.sandboxes[(params["namespace"], params["sandbox"])] = FakeSandbox(config)
        return f"Sandbox {params['sandbox']} started successfully"

    def _stop(self, params: dict[str, Any]) -> str:
        self._get(params)
        del self.sandboxes[(params["namespace"], params["sandbox"])]
        return f"Sandbox {params['sandbox']} stopped successfully"

    def _repl(self, params: dict[str, Any]) -> dict[str, Any]:
        sandbox = self._get(params)
        if params["language"] not in LANGUAGES:
            raise RpcFault(-32602, f"Invalid params: unsupported language {params['language']!r}")
        status, output = _fake_eval(params["code"], sandbox.globals)
        return {"status": status, "language": params["language"], "output": output}

    def _command(self, params: dict[str, Any]) -> dict[str, Any]:
        self._get(params)
        command, args = params["command"], params.get("args", [])
        out: list[str]
        err: list[str]
        if command == "echo":
            code, out, err = 0, [" ".join(args)], []
        elif command == "ls":
            code, out, err = 0, ["bin", "etc", "usr"], []
        elif command == "fail":
            code, out, err = 2, ["partial"], ["boom", "bang"]
        else:
            code, out, err = 127, [], [f"{command}: not found"]
        lines = [{"stream": "stdout", "text": t} for t in out] + [{"stream": "stderr", "text": t} for t in err]
        return {
            "command": command,
            "args": args,
            "exit_code": code,
            "success": code == 0,
            "output": lines,
            "stdout": "".join(t + "\n" for t in out),
            "stderr": "".join(t + "\n" for t in err),
        }

    def _metrics(self, params: dict[str, Any]) -> dict[str, Any]:
        entries = [
            {
                "namespace": ns,
                "name": name,
                "running": True,
                "cpu_usage": 12.5,
                "memory_usage": 48.0,
                "disk_usage": 4096,
            }
            for (ns, name) in self.sandboxes
            if params["namespace"] in ("*", ns) and params.get("sandbox") in (None, name)
        ]
        return {"sandboxes": self.extra_metrics + entries}


def _fake_eval(code: str, env: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """Run ``code`` like a REPL would: print an expression's value, capture prints."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            try:
                value = eval(compile(code, "<repl>", "eval"), env)
            except SyntaxError:
                exec(compile(code, "<repl>", "exec"), env)
                value = None
    except Exception as exc:
        lines = [{"stream": "stdout", "text": t} for t in out.getvalue().splitlines()]
        return "error", [*lines, {"stream": "stderr", "text": f"{type(exc).__name__}: {exc}"}]
    texts = out.getvalue().splitlines() + ([repr(value)] if value is not None else [])
    return "success", [{"stream": "stdout", "text": t} for t in texts]
