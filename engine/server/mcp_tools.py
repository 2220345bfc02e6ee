"""The MCP tools and prompts: one pydantic model per tool (its docstring is the description,
its fields the input schema, its ``run`` the call), and the two sandbox-creating prompts."""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar, Literal

import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field

from engine.errors import ConfigError
from engine.server.service import SandboxConfig, SandboxService

DEFAULT_NAMESPACE = "default"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_NAME_OR_ALL = r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,62})$"
INSTRUCTIONS = ("msb runs untrusted code in microVM sandboxes. Start one with sandbox_start (image microsandbox/"
                "python or microsandbox/node), run code with sandbox_run_code (state persists between calls) or "
                "programs with sandbox_run_command, and always sandbox_stop it when done.")  # fmt: skip

# --- tools: one pydantic model each; its docstring, fields and ``run`` are the tool ---------


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    read_only: ClassVar[bool] = False
    namespace: str = Field(pattern=_NAME, description="Namespace of the sandbox")

    async def run(self, s: SandboxService) -> Any:
        raise NotImplementedError


class SandboxArgs(ToolArgs):
    sandbox: str = Field(pattern=_NAME, description="Name of the sandbox: 1-63 of [A-Za-z0-9_-]")


class StartArgs(SandboxArgs):
    """Start a sandbox (an isolated microVM) for running code, or keep it if it already runs. Images:
    'microsandbox/python' and 'microsandbox/node'. Always stop it with sandbox_stop when done."""

    config: SandboxConfig | None = Field(None, description=(
        "How to make the sandbox: image ('microsandbox/python' or 'microsandbox/node'), memory (MiB), "
        "cpus, envs ['K=V'], workdir, shell, scripts {name: body}, ephemeral (true: nothing is kept after "
        "it stops, and it starts in milliseconds when the server keeps a warm pool of the image). Leave out "
        "to start a sandbox already defined in the namespace's Sandboxfile."))  # fmt: skip

    async def run(self, s: SandboxService) -> Any:
        return await s.start(self.namespace, self.sandbox, self.config)


class StopArgs(SandboxArgs):
    """Stop a running sandbox and free its resources. Call it when you are done with it."""

    async def run(self, s: SandboxService) -> Any:
        return await s.stop(self.namespace, self.sandbox)


class RunCodeArgs(SandboxArgs):
    """Run code in a started sandbox's interpreter (one per language; variables persist between
    calls). Returns status 'success' or 'error' and the output lines in order."""

    language: Literal["python", "node", "nodejs", "javascript"] = Field(description="Language of the code")
    code: str = Field(description="Code to run")
    timeout: float | None = Field(None, gt=0, le=3600, description="Seconds before the code is interrupted")

    async def run(self, s: SandboxService) -> Any:
        return await s.run_code(self.namespace, self.sandbox, self.language, self.code, self.timeout)


class RunCommandArgs(SandboxArgs):
    """Run a program in a started sandbox (no shell) and wait for it. Returns exit_code, stdout,
    stderr and the output lines in order."""

    command: str = Field(min_length=1, description="Program to run (no shell; use 'sh' with args for one)")
    args: list[str] = Field(default_factory=list, description="Arguments of the program")
    timeout: float | None = Field(None, gt=0, le=3600, description="Seconds before the process group is killed")

    async def run(self, s: SandboxService) -> Any:
        return await s.run_command(self.namespace, self.sandbox, self.command, self.args, self.timeout)


class ListArgs(ToolArgs):
    """List the sandboxes of a namespace with their image and status."""

    read_only = True
    namespace: str = Field(pattern=_NAME_OR_ALL, description="Namespace, or '*' for all of them")

    async def run(self, s: SandboxService) -> Any:
        return {"sandboxes": [i.model_dump() for i in await s.list(self.namespace)]}


class MetricsArgs(ListArgs):
    """CPU (% of one CPU), memory (MiB) and disk (bytes) of sandboxes; stopped ones show nulls."""

    sandbox: str | None = Field(None, pattern=_NAME, description="Only this sandbox")

    async def run(self, s: SandboxService) -> Any:
        return {"sandboxes": [m.model_dump() for m in await s.metrics(self.namespace, self.sandbox)]}


class FileReadArgs(SandboxArgs):
    """Read a file from a started sandbox. The result's 'encoding' says how 'content' is given:
    'utf-8' text, or 'base64' when the file is not valid UTF-8."""

    read_only = True
    path: str = Field(min_length=1, description="Path of the file in the sandbox")

    async def run(self, s: SandboxService) -> Any:
        data = await s.read_file(self.namespace, self.sandbox, self.path)
        try:
            encoding, content = "utf-8", data.decode("utf-8")
        except UnicodeDecodeError:
            encoding, content = "base64", base64.b64encode(data).decode()
        return {"path": self.path, "size": len(data), "encoding": encoding, "content": content}


class FileWriteArgs(FileReadArgs):
    """Write a file in a started sandbox, replacing it."""

    read_only = False
    content: str = Field(description="What to write: text, or base64 when encoding is 'base64'")
    encoding: Literal["utf-8", "base64"] = Field("utf-8", description="How content is encoded")

    async def run(self, s: SandboxService) -> Any:
        try:
            text = self.content if self.encoding == "utf-8" else "".join(self.content.split())  # wrapped base64 ok
            data = text.encode() if self.encoding == "utf-8" else base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ConfigError("Invalid params: content is not valid base64") from None
        await s.write_file(self.namespace, self.sandbox, self.path, data)
        return {"path": self.path, "size": len(data), "message": f"Wrote {len(data)} bytes to {self.path}"}


TOOLS: dict[str, type[ToolArgs]] = {
    "sandbox_start": StartArgs,
    "sandbox_stop": StopArgs,
    "sandbox_run_code": RunCodeArgs,
    "sandbox_run_command": RunCommandArgs,
    "sandbox_get_metrics": MetricsArgs,
    "sandbox_list": ListArgs,
    "sandbox_file_read": FileReadArgs,
    "sandbox_file_write": FileWriteArgs,
}


def tool_schema(name: str, model: type[ToolArgs]) -> types.Tool:
    """The tool as ``tools/list`` shows it: the model's JSON Schema with ``$ref``s inlined and
    titles dropped (plainer for LLMs), its docstring as the description."""
    doc = model.model_json_schema()
    defs, description = doc.pop("$defs", {}), doc.pop("description")

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:  # the field's own description beats the model's docstring
                return walk({k: v for k, v in defs[node["$ref"].rsplit("/", 1)[-1]].items() if k != "description"})
            return {k: walk(v) for k, v in node.items() if k != "title"}
        return [walk(v) for v in node] if isinstance(node, list) else node

    hints = types.ToolAnnotations(read_only_hint=True) if model.read_only else None
    return types.Tool(name=name, description=" ".join(description.split()), input_schema=walk(doc), annotations=hints)


# --- prompts --------------------------------------------------------------------------------

_PROMPTS = {  # name → (language label, image, run_code language, example)
    "create_python_sandbox": ("Python", "microsandbox/python", "python", "print('hello')"),
    "create_node_sandbox": ("Node.js", "microsandbox/node", "node", "console.log('hello')"),
}
_PROMPT_ARGS = [
    types.PromptArgument(name="sandbox_name", description="Name for the new sandbox", required=True),
    types.PromptArgument(name="namespace", description="Namespace for the sandbox", required=True),
]
PROMPTS = [types.Prompt(name=n, description=f"Create a {p[0]} sandbox", arguments=_PROMPT_ARGS)
           for n, p in _PROMPTS.items()]  # fmt: skip


def prompt_result(name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
    if name not in _PROMPTS:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name}")
    label, image, language, example = _PROMPTS[name]
    args = arguments or {}  # lenient like microsandbox: defaults for missing arguments
    sandbox = args.get("sandbox_name") or f"{language}-sandbox"
    namespace = args.get("namespace") or DEFAULT_NAMESPACE
    text = (
        f"Create a {label} sandbox named '{sandbox}' in namespace '{namespace}' with the sandbox_start tool, "
        f'config {{"image": "{image}", "memory": 512, "cpus": 1}}.\n\nThen run {label} code in it with '
        f'sandbox_run_code (language "{language}", e.g. code "{example}"); variables persist between calls. '
        "Run programs with sandbox_run_command. When you are done, stop it with sandbox_stop."
    )
    message = types.PromptMessage(role="user", content=types.TextContent(text=text))
    return types.GetPromptResult(description=f"Create a {label} sandbox", messages=[message])
