"""Which external programs code runs, read from the code itself (for tests/unit/test_bootstrap.py).

Python: an AST walk for the literal program of ``subprocess.*``, ``asyncio.create_subprocess_*``,
``os.exec*``/``os.spawn*``/``os.system`` and ``shutil.which`` — given directly, through a name bound
to a literal list or string (or a ``for`` over literal names), or through a module's one-level
wrapper such as ``_run(["apt-get", ...])``. Shell scripts and Makefile recipes: the first word of
each simple command, roughly (comments, here-documents, quoted strings removed). Programs named
only at run time (a path in a variable) are out of reach: the result is a lower bound.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

# ---------------------------------------------------------------------------------- Python

SUBPROCESS_FUNCS = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
    "shutil": {"which"},
    "os": {"execv", "execve", "execvp", "execvpe", "execl", "execlp", "execle", "execlpe",
           "spawnv", "spawnvp", "spawnl", "spawnlp", "posix_spawn", "posix_spawnp", "system", "popen"},
}  # fmt: skip
SHELL_STRING = {"create_subprocess_shell", "system", "popen", "getoutput", "getstatusoutput"}
"""These take one shell command line: the program is its first word."""
MODE_FIRST = {"spawnv", "spawnvp", "spawnl", "spawnlp"}
"""``os.spawn*(mode, file, ...)``: the program is the second argument."""

Found = dict[str, list[str]]
"""program -> where it is run (``path:line``)."""


def _callee(call: ast.Call, aliases: dict[str, str]) -> str | None:
    """``run`` for ``subprocess.run(...)`` or a ``from subprocess import run``; else None."""
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return f.attr if f.attr in SUBPROCESS_FUNCS.get(f.value.id, ()) else None
    return aliases.get(f.id) if isinstance(f, ast.Name) else None


def _argv_expr(call: ast.Call, func: str) -> ast.expr | None:
    """The argument that names the program (the argv list or the program itself)."""
    args = call.args[1:] if func in MODE_FIRST else call.args
    if not args:
        return None
    first = args[0]
    return first.value if isinstance(first, ast.Starred) else first


def _names(expr: ast.expr, bound: dict[str, list[str]]) -> list[str]:
    """The literal program names ``expr`` can be: ``"x"``, ``["x", ...]``, a name bound to them."""
    if isinstance(expr, ast.List | ast.Tuple):
        return _names(expr.elts[0], bound) if expr.elts else []
    if isinstance(expr, ast.Starred):
        return _names(expr.value, bound)
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("list", "tuple", "str"):
        return _names(expr.args[0], bound) if expr.args else []
    if isinstance(expr, ast.Name):
        return bound.get(expr.id, [])
    return []


def _binding(node: ast.AST) -> tuple[str, list[str]] | None:
    """A name bound to literal programs: ``x = ["prog", ...]``, ``for x in ("a", "b")``,
    ``x = {...: "a"}.get(...)``; else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and isinstance(
                value.func.value, ast.Dict):  # fmt: skip
            return node.targets[0].id, [v.value for v in value.func.value.values
                                        if isinstance(v, ast.Constant) and isinstance(v.value, str)]  # fmt: skip
        return node.targets[0].id, _names(value, {})
    if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Tuple | ast.List):
        return node.target.id, [e.value for e in node.iter.elts
                                if isinstance(e, ast.Constant) and isinstance(e.value, str)]  # fmt: skip
    return None


class _Module:
    """One pass over a module: its calls, and the names bound to programs in each function."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, str] = {}
        self.calls: list[tuple[ast.Call, ast.AST]] = []
        """Each call and its innermost enclosing function (or the module)."""
        self.bound: dict[ast.AST, dict[str, list[str]]] = {}
        self._visit(tree, tree)

    def _visit(self, node: ast.AST, owner: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            owner = node
        elif isinstance(node, ast.ImportFrom):
            funcs = SUBPROCESS_FUNCS.get(node.module or "", set())
            self.aliases |= {a.asname or a.name: a.name for a in node.names if a.name in funcs}
        elif isinstance(node, ast.Call):
            self.calls.append((node, owner))
        if (bound := _binding(node)) is not None:
            self.bound.setdefault(owner, {}).setdefault(bound[0], []).extend(bound[1])
        for child in ast.iter_child_nodes(node):
            self._visit(child, owner)

    def wrappers(self) -> set[str]:
        """Functions that pass their first parameter on as a subprocess's argv."""
        out = set()
        for call, owner in self.calls:
            if isinstance(owner, ast.FunctionDef | ast.AsyncFunctionDef) and owner.args.args and (
                    func := _callee(call, self.aliases)):  # fmt: skip
                param = owner.args.args[0].arg
                expr = _argv_expr(call, func)
                if expr is not None and param in _names(expr, {param: [param]}):
                    out.add(owner.name)
        return out


HINTS = ("subprocess", "which", "exec", "spawn", "system(", "popen")
"""A file without any of these runs no program (and is not parsed: the scan stays quick)."""


def python_programs(source: str, where: str) -> Found:
    """The programs one Python source runs or looks for, by the AST (see the module docstring)."""
    if not any(h in source for h in HINTS):
        return {}
    tree = ast.parse(source)
    mod = _Module(tree)
    wrappers = mod.wrappers()
    found: Found = {}
    for call, owner in mod.calls:
        func = _callee(call, mod.aliases) or (call.func.id if isinstance(call.func, ast.Name)
                                              and call.func.id in wrappers else None)  # fmt: skip
        expr = _argv_expr(call, func) if func else None
        if expr is None:
            continue
        bound = mod.bound.get(tree, {}) | mod.bound.get(owner, {})
        for name in _names(expr, bound):
            prog = name.split()[0] if func in SHELL_STRING and name.split() else name
            found.setdefault(prog.rsplit("/", 1)[-1], []).append(f"{where}:{call.lineno}")
    return {p: sorted(set(w)) for p, w in found.items()}


# ---------------------------------------------------------------------------------- shell

KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "esac", "time", "exec", "!", "{", "}",
            "sudo", "env"}  # fmt: skip
"""Words before the command: skipped."""
BUILTINS = {"[", "[[", "]]", "test", "cd", "echo", "printf", "read", "local", "declare", "set", "export", "exit",
            "return", "shift", "trap", "source", ".", "command", "compgen", "mapfile", "wait", "eval", "let", "unset",
            "readonly", ":", "break", "continue", "type", "hash", "ulimit", "umask", "getopts", "true", "false",
            "pwd", "kill"}  # fmt: skip
"""Commands of bash itself."""
PROGRAM = re.compile(r"^[A-Za-z][A-Za-z0-9._+-]*$")
REDIRECT = re.compile(r"^\d*[<>]")
SUDO = re.compile(r"^\$\{?SUDO\b")
"""``$SUDO cmd``, ``"${SUDO[@]}" cmd``: the command comes after."""


def _unquote(text: str) -> str:
    """``text`` with quoted strings emptied, keeping ``$( … )`` inside double quotes (a command)."""
    out, modes, i, word = [], ["code"], 0, ""
    while i < len(text):
        c, mode = text[i], modes[-1]
        if mode == "single":
            modes.pop() if c == "'" else None
        elif mode == "double":
            if c == "\\":
                i += 1
            elif c == '"':
                modes.pop()
                out.append(word if re.fullmatch(r"\$\{?\w+(\[@\])?\}?", word) else '""')
            elif text.startswith("$(", i):
                modes.append("sub")
                word += "$("
                out.append(" $(")
                i += 1
            else:
                word += c
        elif c == "'":
            modes.append("single")
        elif c == '"':
            modes.append("double")
            word = ""
        elif c == ")" and mode == "sub":
            modes.pop()
            out.append(") ")
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _segments(script: str) -> Iterator[str]:
    """The simple commands of a shell script, roughly: comments, here-documents, quoted strings and
    array assignments removed, then split at ``; && || | $( ( )`` and newlines."""
    script = re.sub(r"<<-?\s*'?(\w+)'?[^\n]*\n.*?\n\s*\1\n", "\n", script, flags=re.S)
    script = re.sub(r"(^|\s)#[^\n]*", r"\1", script)
    script = _unquote(script)
    script = re.sub(r"\w+\+?=\([^)]*\)", " ", script)
    yield from re.split(r"\$\(|[;&|()\n`]", script)


def shell_programs(script: str, where: str) -> Found:
    """The first word of each command in a shell script (after keywords, ``VAR=`` assignments,
    redirections, ``sudo``/``env``), without the script's own functions and variables."""
    functions = set(re.findall(r"^\s*([\w-]+)\s*\(\)", script, flags=re.M))
    found: Found = {}
    for segment in _segments(script):
        words = segment.split()
        if words and words[0] in ("for", "case", "select"):
            continue  # the words after are values, not commands
        while words and (words[0] in KEYWORDS or "=" in words[0] or REDIRECT.match(words[0]) or SUDO.match(words[0])):
            words.pop(0)
        if words and PROGRAM.match(words[0]) and words[0] not in BUILTINS | functions:
            found.setdefault(words[0], []).append(where)
    return {p: sorted(set(w)) for p, w in found.items()}


def makefile_programs(text: str, where: str) -> Found:
    """The programs of a Makefile's recipes and ``$(shell …)`` calls."""
    text = re.sub(r"\$[({][A-Za-z_][A-Za-z0-9_]*[)}]", "$V", text)  # make variables, not commands
    recipes = [line.lstrip("\t@-") for line in text.splitlines() if line.startswith("\t")]
    shells = re.findall(r"\$\(shell ([^)]*)\)", text)
    return shell_programs("\n".join(recipes + shells), where)
