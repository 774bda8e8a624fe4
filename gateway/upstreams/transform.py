"""Field-level transforms shared by adapters: redact dotted paths, read a value.

Paths are dotted field names; ``*`` stands for every item of a list or every value
of an object: ``users.*.score.kscore``, ``myInfluencers.*.entity.payload.score``.
"""

from __future__ import annotations

import functools
from typing import Any


def redact(doc: Any, path: str) -> None:
    """Remove the field at ``path`` (in place). Missing fields are ignored."""
    _redact(doc, _parts(path))


@functools.lru_cache(maxsize=1024)
def _parts(path: str) -> tuple[str, ...]:
    # Paths come from the adapters and the policy: few, and split on every answer.
    return tuple(path.split("."))


def _redact(node: Any, parts: tuple[str, ...]) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(node, (dict, list)):
            return
        if not rest:
            node.clear()
            return
        for child in list(node.values()) if isinstance(node, dict) else list(node):
            _redact(child, rest)
        return
    if isinstance(node, dict) and head in node:
        if rest:
            _redact(node[head], rest)
        else:
            del node[head]
    elif isinstance(node, list) and rest and head.isdigit() and int(head) < len(node):
        _redact(node[int(head)], rest)


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path (list indexes as digits), or ``None``."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
