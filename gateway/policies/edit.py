"""Edits to ``policies.yaml`` made by commands, keeping every comment and blank line.

The file is compliance staff's document: commands append to a top-level list in
place instead of re-serialising the file, and the result is checked as a whole
before it atomically replaces the old file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from gateway.policies.loader import PolicySource, parse_policy


def append_to_list(text: str, key: str, items: list[Any]) -> str:
    """``text`` with ``items`` appended to the top-level list ``key`` (created if absent)."""
    block = yaml.safe_dump(items, sort_keys=False, default_flow_style=False, width=1000)
    lines = text.splitlines(keepends=True)
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    found: tuple[yaml.Node, yaml.Node] | None = None
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                found = (k, v)
    if found is None:
        return text.rstrip("\n") + f"\n\n{key}:\n" + _indent(block, 2)
    key_node, value = found
    if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
        first = value.value[0]
        dash_column = max(0, first.start_mark.column - 2)
        end = value.end_mark
        insert_at = end.line if end.column == 0 else end.line + 1
        # Keep trailing comments and blank lines with whatever follows the list.
        while insert_at > 0 and (
            not lines[insert_at - 1].strip() or lines[insert_at - 1].startswith("#")
        ):
            insert_at -= 1
        return "".join([*lines[:insert_at], _indent(block, dash_column), *lines[insert_at:]])
    # ``key: []`` or an empty value: replace the rest of that line with a block list.
    line_no = key_node.start_mark.line
    column = key_node.start_mark.column
    lines[line_no] = " " * column + f"{key}:\n" + _indent(block, column + 2)
    return "".join(lines)


def write_checked(path: Path, text: str) -> PolicySource:
    """Check ``text`` as a whole policy, then atomically replace ``path`` with it."""
    source = parse_policy(text, filename=str(path))  # raises PolicyError; file untouched
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return source


def _indent(block: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in block.splitlines(keepends=True))
