"""Byte-preserving edits of the ``sandboxes:`` mapping of a YAML file.

ruamel.yaml's round trip keeps comments but not every byte (``groups: ~`` comes back as
``groups:``, indentation is normalised). So an edit is applied as a text splice: the whole
edited document is dumped once, each changed entry's lines are cut out of that dump, shifted
to the original's indentation and pasted over the entry's old lines; every other byte of the
original file stays as it was. The result is parsed again and must equal the edited data,
otherwise the caller falls back to a plain ruamel dump.

An entry's lines are its key line and every following line indented deeper than the key, up
to the last non-blank one; comment lines at the key's own indentation or less belong to the
gap between entries and are never touched (except the comment block directly above a removed
entry, which goes with it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq


def yaml_rt(indent: int = 2) -> YAML:
    """The one ruamel configuration used to read and write Sandboxfiles."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=indent, sequence=indent + 2, offset=indent)
    return y


def dump(doc: Any, indent: int = 2) -> str:
    buf = io.StringIO()
    yaml_rt(indent).dump(doc, buf)
    return buf.getvalue()


def plain(value: Any) -> Any:
    """ruamel's node types → plain dicts, lists, str, int, float, bool, None."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def data_of(doc: Any) -> dict[str, Any]:
    """A document's data for comparisons (a missing or empty ``sandboxes`` counts as ``{}``)."""
    data = plain(doc) if isinstance(doc, dict) else {}
    if data.get("sandboxes") is None:
        data["sandboxes"] = {}
    return data


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blank(line: str) -> bool:
    return not line.strip()


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def entry_span(lines: list[str], key_line: int, key_col: int) -> tuple[int, int]:
    """Lines ``[start, end)`` of the entry whose key sits at ``(key_line, key_col)``: up to the
    next non-comment line indented no deeper than the key, without trailing blank lines and
    trailing comments at the key's indentation or less (those belong to the gap)."""
    last = key_line
    for i in range(key_line + 1, len(lines)):
        line = lines[i]
        if _blank(line):
            continue
        if _indent(line) <= key_col:
            if _comment(line):
                continue
            break
        last = i
    return key_line, last + 1


def _gap_after(lines: list[str], end: int) -> list[str]:
    """The blank and comment lines after an entry, up to the next key."""
    stop = end
    while stop < len(lines) and (_blank(lines[stop]) or _comment(lines[stop])):
        stop += 1
    return lines[end:stop]


def _without(block: list[str], gap: list[str]) -> list[str]:
    """``block`` without the first run of lines equal to ``gap`` (ruamel re-emits the comments
    between two entries inside the first one, before keys appended to it)."""
    want = [ln.rstrip("\n") for ln in gap]
    if not any(_comment(ln) for ln in want):
        return block
    have = [ln.rstrip("\n") for ln in block]
    for i in range(len(have) - len(want) + 1):
        if have[i : i + len(want)] == want:
            return block[:i] + block[i + len(want) :]
    return block


def _comment_block_above(lines: list[str], start: int, key_col: int) -> int:
    while start > 0 and _comment(lines[start - 1]) and _indent(lines[start - 1]) == key_col:
        start -= 1
    return start


def _shift(block: list[str], by: int) -> list[str]:
    if by >= 0:
        return [(" " * by + ln) if not _blank(ln) else ln for ln in block]
    return [ln[-by:] if ln[:-by].strip() == "" else ln for ln in block]


def _with_newline(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"


class _Splice:
    """One splice of an edited document into its original text (see the module docstring)."""

    def __init__(self, original: str, old: CommentedMap, doc: CommentedMap) -> None:
        self.lines = original.splitlines(keepends=True)
        self.old_sb = old.get("sandboxes")
        self.old_data, self.new_data = data_of(old), data_of(doc)
        self.indent = 2
        if isinstance(self.old_sb, CommentedMap) and len(self.old_sb) > 0:
            first = next(iter(self.old_sb))
            self.indent = max(1, self.old_sb.lc.key(first)[1] - old.lc.key("sandboxes")[1])
        fresh_text = dump(doc, self.indent)
        self.fresh_sb = yaml_rt().load(fresh_text).get("sandboxes")
        self.fresh_lines = fresh_text.splitlines(keepends=True)
        self.edits: list[tuple[int, int, list[str]]] = []

    def fresh_block(self, name: str, col: int, gap: list[str]) -> list[str]:
        line, fcol = self.fresh_sb.lc.key(name)
        start, end = entry_span(self.fresh_lines, line, fcol)
        block = _without(self.fresh_lines[start:end], gap)
        while block and (_blank(block[-1]) or (_comment(block[-1]) and _indent(block[-1]) <= fcol)):
            block.pop()
        return [_with_newline(ln) for ln in _shift(block, col - fcol)]

    def existing(self) -> tuple[int, int, str]:
        """Rewrite or drop the entries already in the file; returns where new ones go
        (line, key column, separator)."""
        lines, old_sb = self.lines, self.old_sb
        assert isinstance(old_sb, CommentedMap)
        positions = {str(k): (old_sb.lc.key(k)[0], old_sb.lc.key(k)[1]) for k in old_sb}
        spans = {n: entry_span(lines, ln, col) for n, (ln, col) in positions.items()}
        new_sb = self.new_data["sandboxes"]
        for name, (start, end) in spans.items():
            col = positions[name][1]
            if name not in new_sb:
                start = _comment_block_above(lines, start, col)
                if end < len(lines) and _blank(lines[end]) and (start == 0 or _blank(lines[start - 1])):
                    end += 1
                self.edits.append((start, end, []))
            elif new_sb[name] != self.old_data["sandboxes"][name]:
                self.edits.append((start, end, self.fresh_block(name, col, _gap_after(lines, end))))
        last = max(spans, key=lambda n: spans[n][1])
        col = positions[last][1]
        above = _comment_block_above(lines, spans[last][0], col)
        sep = "\n" if len(spans) > 1 and above > 0 and _blank(lines[above - 1]) else ""
        return spans[last][1], col, sep

    def add(self, names: list[str], at: int, col: int, sep: str, header: list[str]) -> None:
        block = list(header)
        for name in names:
            block += ([sep] if sep else []) + self.fresh_block(name, col, [])
        replaced = [i for i, (s, e, b) in enumerate(self.edits) if not b and s <= at <= e]
        if replaced:  # the last entry was removed: the new ones take its place (and its gap)
            start = self.edits[replaced[0]][0]
            self.edits[replaced[0]] = (start, at, block[1:] if sep else block)
            return
        if 0 < at <= len(self.lines):
            self.lines[at - 1] = _with_newline(self.lines[at - 1])
        self.edits.append((at, at, block))

    def result(self) -> str:
        lines = list(self.lines)
        for start, end, block in sorted(self.edits, key=lambda e: e[0], reverse=True):
            lines[start:end] = block
        return "".join(lines)


def splice(original: str, doc: CommentedMap) -> str | None:
    """``original`` with only the entries of ``doc["sandboxes"]`` that differ rewritten, or
    ``None`` when that is not possible (flow-style ``sandboxes``, other top-level changes,
    or a result that does not read back as ``doc``)."""
    y = yaml_rt()
    old = (y.load(original) if original.strip() else None) or CommentedMap()
    if not isinstance(old, CommentedMap):
        return None
    if {**data_of(doc), "sandboxes": None} != {**data_of(old), "sandboxes": None}:
        return None
    sp = _Splice(original, old, doc)
    old_sb = sp.old_sb
    header: list[str] = []
    if isinstance(old_sb, CommentedMap) and len(old_sb) > 0:
        if old_sb.fa.flow_style():
            return None
        at, col, sep = sp.existing()
    elif "sandboxes" in old:
        key_line, key_col = old.lc.key("sandboxes")
        rest = sp.lines[key_line].split(":", 1)[1].strip()
        if old_sb is not None or (rest and not rest.startswith("#")):  # "sandboxes: {}" / "sandboxes: ~"
            return None
        at, col, sep = key_line + 1, key_col + 2, ""
    else:
        at, col, sep, header = len(sp.lines), 2, "", ["sandboxes:\n"]
    added = [str(n) for n in (sp.fresh_sb or {}) if not isinstance(old_sb, dict) or n not in old_sb]
    if added:
        sp.add(added, at, col, sep, header)
    result = sp.result()
    try:
        if data_of(y.load(result)) != sp.new_data:
            return None
    except Exception:  # a splice that does not parse: fall back to a full dump
        return None
    return result


def _quote_style(like: Any) -> Callable[[str], Any]:
    """How to write the strings of a list: like the first string of the list it replaces
    (plain, 'single' or "double"); double quotes for a new list, as in ``["8000:8000"]``."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString

    if isinstance(like, list):
        for item in like:
            if isinstance(item, ScalarString):
                return type(item)
            if isinstance(item, str):
                return str
    return DoubleQuotedScalarString


def to_yaml(value: Any, like: Any = None) -> Any:
    """A value ready to put into a ruamel document: lists become sequences (flow style if the
    value they replace was, or if they are new), multi-line strings literal blocks."""
    from ruamel.yaml.scalarstring import LiteralScalarString

    if isinstance(value, list):
        quote = _quote_style(like)
        seq = CommentedSeq([quote(v) if isinstance(v, str) and "\n" not in v else to_yaml(v) for v in value])
        flow = like.fa.flow_style() if isinstance(like, CommentedSeq) else True
        if flow:
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        return CommentedMap((k, to_yaml(v)) for k, v in value.items())
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value)
    return value


def merge(current: CommentedMap, values: dict[str, Any], owned: set[str] | None = None) -> None:
    """Make ``current`` hold ``values`` while touching as little as possible: unchanged keys
    keep their comments and quoting; keys not in ``owned`` (``None`` = all) are never deleted."""
    for key in list(current):
        if key not in values and (owned is None or key in owned):
            del current[key]
    order = list(values)
    for key, value in values.items():
        old = current.get(key)
        if plain(old) == value and key in current:
            continue
        if isinstance(value, dict) and isinstance(old, CommentedMap):
            merge(old, value)
        elif key in current:
            current[key] = to_yaml(value, like=old)
        else:  # a new key goes after the nearest key that comes before it in ``values``
            before = [k for k in order[: order.index(key)] if k in current]
            at = list(current).index(before[-1]) + 1 if before else 0
            if at >= len(current):
                current[key] = to_yaml(value)
            else:
                current.insert(at, key, to_yaml(value))
