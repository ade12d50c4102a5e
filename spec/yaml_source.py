"""Safe YAML loading with the line and column of every node.

Contracts hold plain data: strings, numbers, booleans, null, lists and mappings. Anything else -- a
``!!python/...`` tag, a merge key, a duplicate key, a file that is not UTF-8, an alias expansion that
would blow up -- is reported as a :class:`~spec.diagnostics.Diagnostic`; nothing is ever constructed from
a tag and no code runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spec.diagnostics import ERROR, Diagnostic
from spec.files import UnsafeFile, read_regular_file

MAX_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_EXPANDED_CHARS = 2 * MAX_BYTES  # the text of every scalar, counted once per alias that repeats it

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}

Pointer = tuple[Any, ...]


@dataclass
class Document:
    """A loaded YAML file: its data and where each value (and mapping key) starts, 1-based."""

    path: str
    text: str
    data: Any
    sha256: str
    values: dict[Pointer, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Pointer, tuple[int, int]] = field(default_factory=dict)

    def where(self, pointer: Pointer, *, key: bool = False) -> tuple[int, int]:
        """Line and column of the value at ``pointer`` (of its key with ``key=True``), or of the
        nearest enclosing value that has a place."""
        p = tuple(pointer)
        if key and p in self.keys:
            return self.keys[p]
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))


class SourceError(Exception):
    """The file cannot be read as a contract; ``diagnostics`` says why and where."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("; ".join(d.format() for d in diagnostics))
        self.diagnostics = diagnostics


def _error(path: str, line: int, col: int, rule: str, message: str) -> SourceError:
    return SourceError([Diagnostic(path, line, col, ERROR, rule, message)])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: str | Path, display: str | None = None) -> Document:
    """Load ``path`` as plain YAML data, or raise :class:`SourceError`."""
    shown = display or str(path)
    try:
        raw = read_regular_file(Path(path), MAX_BYTES)
    except UnsafeFile as exc:
        raise _error(shown, 0, 0, "YAML-TOO-LARGE" if exc.too_large else "FILE-UNREADABLE", str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _error(
            shown,
            line,
            col,
            "FILE-ENCODING",
            f"byte 0x{raw[exc.start]:02x} is not UTF-8: save the file as UTF-8",
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise _error(shown, 0, 0, "FILE-EMPTY", "the file is empty: a contract needs at least metadata")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise _error(shown, line, col, "YAML-SYNTAX", f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise _error(shown, 0, 0, "YAML-SYNTAX", f"YAML syntax error: {exc}") from None
    except RecursionError:  # the composer recurses once per level: [[[[...]]]] thousands deep
        raise _error(
            shown,
            0,
            0,
            "YAML-TOO-LARGE",
            f"the document nests too deeply to parse: a contract nests at most {MAX_DEPTH} levels",
        ) from None
    if root is None:
        raise _error(shown, 0, 0, "FILE-EMPTY", "the file holds no YAML document, only comments")
    doc = Document(shown, text, None, hashlib.sha256(raw).hexdigest())
    builder = _Builder(doc)
    try:
        doc.data = builder.build(root, (), 0)
    except _Abort:
        raise SourceError(builder.errors) from None
    if builder.errors:
        raise SourceError(builder.errors)
    if not isinstance(doc.data, dict):
        line, col = doc.where(())
        kind = type(doc.data).__name__ if doc.data is not None else "null"
        raise _error(
            shown,
            line,
            col,
            "FILE-NOT-MAPPING",
            f"the top level is a {kind}, not a mapping: a contract starts with keys such as metadata:",
        )
    return doc


class _Builder:
    """Turns a composed node graph into plain Python data, recording positions and problems."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.errors: list[Diagnostic] = []
        self.nodes = 0
        self.chars = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def _fail(self, node: yaml.Node, rule: str, message: str) -> None:
        self.errors.append(
            Diagnostic(
                self.doc.path, node.start_mark.line + 1, node.start_mark.column + 1, ERROR, rule, message
            )
        )

    def build(self, node: yaml.Node, pointer: Pointer, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            what = (
                f"more than {MAX_NODES} nodes"
                if self.nodes > MAX_NODES
                else f"nesting deeper than {MAX_DEPTH}"
            )
            self._fail(
                node, "YAML-TOO-LARGE", f"the document expands to {what} (an alias bomb?): remove the aliases"
            )
            raise _Abort
        self.doc.values.setdefault(pointer, (node.start_mark.line + 1, node.start_mark.column + 1))
        if node.tag not in _PLAIN_TAGS:
            shown_tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._fail(
                node,
                "YAML-UNSAFE-TAG",
                f"tag '{shown_tag}' is not allowed: contracts hold plain strings, numbers, lists and mappings",
            )
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, pointer, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*pointer, i), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        text = node.value
        self.chars += len(text)
        if self.chars > MAX_EXPANDED_CHARS:
            self._fail(
                node,
                "YAML-TOO-LARGE",
                f"the document's text expands past {MAX_EXPANDED_CHARS} characters through aliases "
                "(an alias bomb?): remove the aliases",
            )
            raise _Abort
        bad = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
        if bad is not None:
            self._fail(
                node,
                "YAML-BAD-VALUE",
                f"the scalar holds a lone surrogate ({ascii(bad)[1:-1]}), which is not a Unicode character: remove it",
            )
            return None
        if node.tag == "tag:yaml.org,2002:timestamp":
            return text
        try:
            return self.constructor.construct_object(node)
        except (ValueError, TypeError, KeyError, OverflowError, yaml.YAMLError) as exc:
            shown_tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            shown = text if len(text) <= 40 else text[:37] + "..."
            self._fail(
                node,
                "YAML-BAD-VALUE",
                f"{shown!a} is not a valid {shown_tag} ({type(exc).__name__}): fix the value or drop the tag",
            )
            return None

    def _mapping(self, node: yaml.MappingNode, pointer: Pointer, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._fail(
                    key_node, "YAML-UNSAFE-TAG", "merge keys ('<<') are not supported: write the keys out"
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(
                    key_node, "YAML-SYNTAX", "a mapping key must be a plain scalar, not a list or mapping"
                )
                continue
            key = self.build(key_node, (*pointer, "<key>"), depth + 1)
            if isinstance(key, (dict, list)) or (key is None and key_node.tag != "tag:yaml.org,2002:null"):
                continue
            if key in first:
                self._fail(
                    key_node,
                    "YAML-DUPLICATE-KEY",
                    f"duplicate key '{key}' (first at line {first[key]}): keep one of them",
                )
                continue
            first[key] = key_node.start_mark.line + 1
            self.doc.keys[(*pointer, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, (*pointer, key), depth + 1)
        self.doc.values.pop((*pointer, "<key>"), None)
        return out


class _Abort(Exception):
    pass


def load_or_diagnostics(
    path: str | Path, display: str | None = None
) -> tuple[Document | None, list[Diagnostic]]:
    """Like :func:`load`, but returns the diagnostics instead of raising."""
    try:
        return load(path, display), []
    except SourceError as exc:
        return None, exc.diagnostics
