"""YAML text to plain Python, remembering where in the file every value came from.

PyYAML's ``yaml.safe_load`` forgets positions and silently keeps the last of two
equal keys. We ``compose`` instead (the node tree, where every node has a
``start_mark``), refuse duplicate keys, and build plain dicts, lists and scalars
while recording, for each JSON path such as ``$.rules[3].when.purpose``, the line
and column of its value and (for mapping entries) of its key.

Both the policy loader and the YAML test cases read files through here, so both
report mistakes as ``FILE:LINE:COL: message``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a file: a stable machine ``code``, a human message, a position.

    ``line`` and ``col`` count from 1, like editors do. Rendered as
    ``FILE:LINE:COL: message``.
    """

    code: str
    message: str
    line: int
    col: int
    # The file the problem is in, when it is not the one being read (a test case
    # file named by the policy).
    file: str | None = None

    def render(self, filename: str) -> str:
        return f"{self.file or filename}:{self.line}:{self.col}: {self.message}"


@dataclass(slots=True)
class Located:
    """Plain data from a YAML file, with the position of every value and key."""

    data: Any
    # JSON path -> (line, col) of the value at that path.
    values: dict[str, tuple[int, int]] = field(default_factory=dict)
    # JSON path -> (line, col) of the key that introduced the value at that path.
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Problems that did not stop reading (duplicate keys, merge keys); the first of
    # two equal keys is kept, so later checks still see the rest of the file.
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: str, *, key: bool = False) -> tuple[int, int]:
        """The closest known position of ``path``: the path itself or its nearest parent."""
        table = self.keys if key else self.values
        probe = path
        while True:
            if probe in table:
                return table[probe]
            if key and probe in self.values:
                return self.values[probe]
            parent = parent_path(probe)
            if parent == probe:
                return self.values.get("$", (1, 1))
            probe = parent


class YamlSourceError(Exception):
    """The text is not YAML we can read; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def parent_path(path: str) -> str:
    """``$.rules[3].when`` -> ``$.rules[3]`` -> ``$.rules`` -> ``$``."""
    if path == "$":
        return path
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else "$"


def child_path(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if text and all(c.isalnum() or c in "_-" for c in text):
        return f"{path}.{text}"
    # Keys with dots (purpose names) are quoted so the path stays unambiguous.
    return f"{path}[{text!r}]"


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"


def read_yaml(text: str) -> Located:
    """Compose ``text`` and convert it.

    A syntax error stops reading and raises :class:`YamlSourceError`; duplicate keys
    and the like do not: they are collected in ``Located.problems``.
    """
    try:
        _check_structure(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except _StructureError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSourceError([Problem("yaml.structure", str(exc.problem), line, col)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or "this is not valid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise YamlSourceError(
            [
                Problem(
                    "yaml.syntax",
                    f"the file is not valid YAML: {what}{context}; check the indentation, "
                    "colons and quotes on this line and the one before",
                    line,
                    col,
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(
            [Problem("yaml.syntax", f"the file is not valid YAML: {exc}", 1, 1)]
        ) from None
    located = Located(data=None)
    if root is None:
        return located
    constructor = SafeConstructor()
    located.data = _convert(root, "$", located, located.problems, constructor, set())
    return located


_PLAIN_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"})
#: Scalar tags the safe constructor knows; any other tag (``!foo``) names a type
#: this file cannot hold.
_SCALAR_TAGS = frozenset(
    "tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "binary")
)
#: The digits of the longest integer or float a policy may hold. Python refuses to
#: read integers longer than 4300 digits; far shorter ones already overflow every
#: field (msgspec's integers are 64-bit) and would only cost time to read.
MAX_NUMBER_DIGITS = 100
_UNREADABLE: Any = object()


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    shown = shown if len(shown) <= 40 else shown[:40] + "..."
    return (
        f"the YAML tag {shown!r} is not allowed in a policy file; remove it and write "
        "the value as plain text, a number, true/false, a list or a mapping"
    )


def _construct_scalar(
    node: ScalarNode, problems: list[Problem], constructor: SafeConstructor
) -> Any:
    """The value of one scalar, or :data:`_UNREADABLE` with a problem at its position.

    PyYAML raises for what a tag promises but the text does not hold (``!!int abc``,
    ``!!float abc``), for tags it does not know (``!foo``), and Python for
    integers longer than it will convert: all of them are mistakes in the file, at
    this node, never a reason for the reader to fail.
    """
    line, col = _pos(node)
    if node.tag not in _SCALAR_TAGS:
        problems.append(Problem("yaml.tag", _tag_message(node.tag), line, col))
        return _UNREADABLE
    if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_NUMBER_DIGITS:
            problems.append(
                Problem(
                    "yaml.number",
                    f"this number has {digits} digits; a policy number has at most "
                    f"{MAX_NUMBER_DIGITS}",
                    line,
                    col,
                )
            )
            return _UNREADABLE
    try:
        return constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        reason = getattr(exc, "problem", None) or str(exc)
        shown = node.tag.replace("tag:yaml.org,2002:", "!!")
        problems.append(
            Problem(
                "yaml.value",
                f"this value cannot be read as {shown}: {str(reason)[:120]}; "
                "remove the tag or correct the value",
                line,
                col,
            )
        )
        return _UNREADABLE


#: Deeper than any policy needs; PyYAML's composer recurses once per level.
MAX_DEPTH = 32


class _StructureError(yaml.MarkedYAMLError):
    pass


def _check_structure(text: str) -> None:
    """Refuse, before composing, what a policy never needs and an attacker loves:
    anchors and aliases ("billion laughs": each alias expands to a whole subtree)
    and nesting deep enough to exhaust the composer's recursion. The event parser
    is iterative, so this scan is linear in the text and cannot recurse."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _StructureError(
                problem="anchors (&name) and aliases (*name) are not allowed in a policy file; "
                "write each value out",
                problem_mark=event.start_mark,  # type: ignore[arg-type]
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _StructureError(
                    problem=f"the file nests deeper than {MAX_DEPTH} levels",
                    problem_mark=event.start_mark,  # type: ignore[arg-type]
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _convert(
    node: Node,
    path: str,
    located: Located,
    problems: list[Problem],
    constructor: SafeConstructor,
    active: set[int],
) -> Any:
    located.values[path] = _pos(node)
    if id(node) in active:
        line, col = _pos(node)
        problems.append(
            Problem("yaml.recursive", "an alias refers to itself; write the value out", line, col)
        )
        return None
    if isinstance(node, ScalarNode):
        if node.tag == _TIMESTAMP:
            # A date is kept as the text written; no field of ours is a date.
            return node.value
        if node.tag == _VALUE:
            return node.value  # a lone ``=``, which PyYAML resolves but cannot build
        value = _construct_scalar(node, problems, constructor)
        if value is _UNREADABLE:
            return None  # the problem is recorded; the rest of the file is still read
        if isinstance(value, datetime.date):
            return node.value
        return value
    if node.tag not in _PLAIN_COLLECTION_TAGS:
        # ``!!set``, ``!!omap``, ``!foo [..]``: the value would be read as something
        # else than written, or not at all.
        line, col = _pos(node)
        problems.append(Problem("yaml.tag", _tag_message(node.tag), line, col))
        return None
    active.add(id(node))
    try:
        if isinstance(node, SequenceNode):
            return [
                _convert(item, child_path(path, i), located, problems, constructor, active)
                for i, item in enumerate(node.value)
            ]
        if isinstance(node, MappingNode):
            return _convert_mapping(node, path, located, problems, constructor, active)
    finally:
        active.discard(id(node))
    line, col = _pos(node)  # pragma: no cover - PyYAML has only the three node kinds
    problems.append(Problem("yaml.node", "unexpected YAML node", line, col))
    return None


def _convert_mapping(
    node: MappingNode,
    path: str,
    located: Located,
    problems: list[Problem],
    constructor: SafeConstructor,
    active: set[int],
) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    first_seen: dict[Any, tuple[int, int]] = {}
    for key_node, value_node in node.value:
        line, col = _pos(key_node)
        if key_node.tag == _MERGE:
            problems.append(
                Problem(
                    "yaml.merge",
                    "merge keys ('<<') are not supported in this file; "
                    "write the fields out in full",
                    line,
                    col,
                )
            )
            continue
        if not isinstance(key_node, ScalarNode):
            problems.append(
                Problem(
                    "yaml.key",
                    "a key must be a plain word, not a list or a mapping",
                    line,
                    col,
                )
            )
            continue
        key = (
            key_node.value
            if key_node.tag == _VALUE
            else _construct_scalar(key_node, problems, constructor)
        )
        if key is _UNREADABLE:
            continue
        if not isinstance(key, str):
            # Keys are names; ``yes:`` or ``10:`` become text, as written.
            key = key_node.value
        if key in first_seen:
            first_line, first_col = first_seen[key]
            problems.append(
                Problem(
                    "yaml.duplicate_key",
                    f"the key '{key}' is given twice in the same mapping (first at line "
                    f"{first_line}, column {first_col}); keep only one of them",
                    line,
                    col,
                )
            )
            continue
        first_seen[key] = (line, col)
        child = child_path(path, key)
        located.keys[child] = (line, col)
        result[key] = _convert(value_node, child, located, problems, constructor, active)
    return result
