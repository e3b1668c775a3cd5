"""A strict YAML reader that keeps the line of every key and value.

Rule and case files are read into a small tree of `YMap`, `YSeq` and
`YScalar` nodes, each carrying its 1-based line, so every later problem can
be reported as `file:line: problem`.

Strictness, on purpose:

* YAML 1.1's implicit booleans are off: only `true` / `false` are booleans,
  so the rule key `on:` stays the string "on" (PyYAML would read it as
  `True`), and `enabled: yes` is an error rather than a surprise.
* Integers are plain decimal (`10`, `-3`, `50_000`); `010101` (a region
  code) and `1:20` stay strings instead of becoming octal or sexagesimal.
* Duplicate keys in a mapping, several documents in one file, and tags
  other than the core ones are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from service.errors import SourceProblem

ScalarValue = str | int | float | bool | None

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with a small, predictable set of implicit scalar types."""


_StrictLoader.yaml_implicit_resolvers = {}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*(?:_[0-9]+)*)$"), list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:0|[1-9][0-9]*(?:_[0-9]+)*)\.[0-9]+(?:_[0-9]+)*$"),
    list("-+0123456789"),
)
_StrictLoader.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


@dataclass(frozen=True, slots=True)
class YScalar:
    value: ScalarValue
    line: int
    # For block scalars (`|`, `>`) the text starts on the line after the
    # indicator; `text_line` is the line of the first character of `value`.
    text_line: int
    column: int
    style: str | None


@dataclass(frozen=True, slots=True)
class YSeq:
    items: tuple[YNode, ...]
    line: int


@dataclass(frozen=True, slots=True)
class YMap:
    items: tuple[tuple[YScalar, YNode], ...]
    line: int

    def get(self, key: str) -> YNode | None:
        for k, v in self.items:
            if k.value == key:
                return v
        return None

    def key_node(self, key: str) -> YScalar | None:
        for k, _ in self.items:
            if k.value == key:
                return k
        return None


YNode = YScalar | YSeq | YMap


def describe(node: YNode) -> str:
    """A short description of a node for error messages: 'a list', "'high'"."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    value = node.value
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


class _Converter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[SourceProblem] = []

    def problem(self, line: int, text: str) -> None:
        self.problems.append(SourceProblem(self.file, line, text))

    def convert(self, node: Node) -> YNode:
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                self.problem(line, f"unsupported YAML tag {node.tag}")
            return YSeq(tuple(self.convert(item) for item in node.value), line)
        if isinstance(node, MappingNode):
            if node.tag != _MAP:
                self.problem(line, f"unsupported YAML tag {node.tag}")
            items: list[tuple[YScalar, YNode]] = []
            seen: dict[ScalarValue, int] = {}
            for key_node, value_node in node.value:
                key = self.convert(key_node)
                if not isinstance(key, YScalar) or not isinstance(key.value, str):
                    self.problem(key_node.start_mark.line + 1, "mapping keys must be plain strings")
                    continue
                if key.value in seen:
                    self.problem(key.line, f"duplicate key '{key.value}' (first at line {seen[key.value]})")
                    continue
                seen[key.value] = key.line
                items.append((key, self.convert(value_node)))
            return YMap(tuple(items), line)
        raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover - compose yields only these

    def scalar(self, node: ScalarNode) -> YScalar:
        line = node.start_mark.line + 1
        text_line = line + 1 if node.style in ("|", ">") else line
        column = node.start_mark.column + 1
        raw = node.value
        value: ScalarValue
        if node.tag == _STR:
            value = raw
        elif node.tag == _INT:
            value = int(raw.replace("_", ""))
        elif node.tag == _FLOAT:
            value = float(raw.replace("_", ""))
        elif node.tag == _BOOL:
            value = raw.lower() == "true"
        elif node.tag == _NULL:
            value = None
        else:
            self.problem(line, f"unsupported YAML tag {node.tag}")
            value = raw
        return YScalar(value, line, text_line, column, node.style)


def parse_yaml(text: str, file: str) -> tuple[YNode | None, list[SourceProblem]]:
    """Parse one YAML document; returns its tree (None for an empty file) and any problems."""
    try:
        documents = list(yaml.compose_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        return None, [SourceProblem(file, line, f"YAML syntax error: {problem}")]
    except yaml.YAMLError as exc:
        return None, [SourceProblem(file, 1, f"YAML syntax error: {exc}")]
    documents = [d for d in documents if d is not None]
    if not documents:
        return None, []
    if len(documents) > 1:
        line = documents[1].start_mark.line + 1
        return None, [SourceProblem(file, line, "only one YAML document per file")]
    converter = _Converter(file)
    tree = converter.convert(documents[0])
    return tree, converter.problems
