"""YAML text -> plain data plus the line:column of every key and value, reporting problems instead of raising."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.main import CParser
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[Any, ...]
Position = tuple[int, int]  # 1-based line, column

MAX_DEPTH = 64


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in an admin's file: `file:line:col: what — fix`."""

    file: str
    line: int
    column: int
    what: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f" — {_one_line(self.fix)}" if self.fix else ""
        return f"{self.file}:{self.line}:{self.column}: {_one_line(self.what)}{fix}"


def _one_line(text: str) -> str:
    """Control characters and line breaks from the file are shown escaped: a problem is one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@dataclass
class LocatedDocument:
    """Plain data of a YAML file with where each key and value was written."""

    file: str
    data: Any = None
    keys: dict[Path, Position] = field(default_factory=dict)
    values: dict[Path, Position] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def at(self, path: Path, *, key: bool = False) -> Position:
        """Where `path` (or its nearest written ancestor) is in the file."""
        path = tuple(path)
        while True:
            if key and path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            if path in self.keys:
                return self.keys[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def problem(self, path: Path, what: str, fix: str = "", *, key: bool = False) -> Problem:
        line, column = self.at(path, key=key)
        found = Problem(self.file, line, column, what, fix)
        self.problems.append(found)
        return found


def _position(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Converter:
    def __init__(self, doc: LocatedDocument) -> None:
        self.doc = doc
        self.active: set[int] = set()

    def convert(self, node: Node, path: Path, depth: int = 0) -> Any:
        self.doc.values.setdefault(path, _position(node))
        if depth > MAX_DEPTH:
            self.doc.problem(path, f"nesting deeper than {MAX_DEPTH} levels", "flatten the structure")
            return None
        if id(node) in self.active:
            self.doc.problem(path, "an alias refers to itself", "remove the recursive anchor/alias")
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.convert(item, path + (index,), depth + 1) for index, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self.mapping(node, path, depth)
        finally:
            self.active.discard(id(node))
        self.doc.problem(path, "unsupported YAML node", "write a plain value, list or mapping")
        return None

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, Position] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and str(key_node.tag).endswith(":merge"):
                merged = self.convert(value_node, path, depth + 1)
                for part in merged if isinstance(merged, list) else [merged]:
                    if isinstance(part, dict):
                        for key, value in part.items():
                            result.setdefault(key, value)
                    else:
                        self.doc.problem(path, "`<<` merges only mappings", "point the alias at a mapping")
                continue
            if not isinstance(key_node, ScalarNode):
                self.doc.problems.append(
                    Problem(self.doc.file, *_position(key_node), "a key must be a plain word, not a list or mapping",
                            "write `name: value`")
                )
                continue
            key = str(key_node.value)
            where = _position(key_node)
            if key in first_seen:
                self.doc.problems.append(
                    Problem(self.doc.file, *where, f'duplicate key "{key}" (first at line {first_seen[key][0]})',
                            "keep one of them; YAML would silently use only one")
                )
                continue
            first_seen[key] = where
            self.doc.keys[path + (key,)] = where
            result[key] = self.convert(value_node, path + (key,), depth + 1)
        return result

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag = str(node.tag)
        text = node.value
        if node.style == ">":
            return text.replace("\a", "")  # the round-trip parser marks where a folded scalar was folded
        if tag.endswith(":str") or tag.endswith(":timestamp") or node.style in ("'", '"', "|"):
            return text
        if tag.endswith(":null"):
            return None
        if tag.endswith(":bool"):
            return text.lower() in ("true", "yes", "on", "y")
        if tag.endswith(":int"):
            digits = text.replace("_", "")
            for base in (0, 10):
                try:
                    return int(digits, base)
                except ValueError:
                    continue
            return text
        if tag.endswith(":float"):
            lowered = text.lower().replace("_", "")
            if lowered in (".inf", "+.inf"):
                return math.inf
            if lowered == "-.inf":
                return -math.inf
            if lowered == ".nan":
                return math.nan
            try:
                return float(lowered)
            except ValueError:
                return text
        if tag.startswith("!"):
            self.doc.problems.append(
                Problem(self.doc.file, *_position(node), f"unknown tag {tag}", "remove the tag; plain values are enough")
            )
        return text


def read_yaml(text: str, file: str) -> LocatedDocument:
    """Parse YAML text; syntax errors become problems with their position, never exceptions."""
    doc = LocatedDocument(file)
    try:
        root = _compose(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = " ".join(part for part in (error.context, error.problem) if part) or "YAML syntax error"
        doc.problems.append(Problem(file, line, column, f"YAML syntax error: {what}",
                                    "check indentation, colons and quotes around this place"))
        return doc
    except (YAMLError, ValueError, TypeError, RecursionError, IndexError, AttributeError, KeyError, AssertionError) as error:
        line, column = _mark_of(error)
        doc.problems.append(Problem(file, line, column, f"YAML cannot be read: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
                                    "save the file as plain UTF-8 YAML"))
        return doc
    if root is None:
        doc.problems.append(Problem(file, 1, 1, "the file is empty", "start from the shipped example in mappings/"))
        return doc
    try:
        doc.data = _Converter(doc).convert(root, ())
    except RecursionError:
        doc.problems.append(Problem(file, 1, 1, "the file nests too deeply", "flatten the structure"))
    return doc


def _compose(text: str) -> Node | None:
    """The document's node tree, positions included: by ruamel's C parser (ruamel.yaml.clib, ten times faster on a
    big plans file) when it is installed and reads the text; else, and for any text it refuses, by the pure
    round-trip parser, whose errors the problems quote."""
    if CParser is not None:
        try:
            return YAML(typ="safe", pure=False).compose(text)
        except Exception:  # noqa: BLE001 - the pure parser below reads it again and says what is wrong, and where
            pass
    return YAML(typ="rt").compose(text)


def _mark_of(error: BaseException) -> Position:
    mark = getattr(error, "problem_mark", None) or getattr(error, "mark", None)
    line = getattr(mark, "line", None)
    if isinstance(line, int):
        return (line + 1, getattr(mark, "column", 0) + 1)
    position = getattr(error, "position", None)
    return (1, (position + 1) if isinstance(position, int) else 1)
