"""A one-line progress bar on stderr for long exports, only where a person watches.

Shown when stderr is a terminal (or when asked for); never in a pipe, a log file
or CI output, where ``\\r`` redraws would only add noise. Redrawn at most once per
whole percent, so its cost does not grow with the number of records.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

__all__ = ["ProgressBar", "counted"]

T = TypeVar("T")


class ProgressBar:
    def __init__(self, total: int, label: str, stream: IO[str]) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.done = 0
        self._shown = -1

    @classmethod
    def for_terminal(
        cls, total: int, label: str, *, force: bool | None = None, stream: IO[str] | None = None
    ) -> ProgressBar | None:
        """A bar if ``force`` says so, or (``force`` is None) if stderr is a terminal."""
        out = stream or sys.stderr
        show = out.isatty() if force is None else force
        return cls(total, label, out) if show else None

    def advance(self, n: int = 1) -> None:
        self.done += n
        percent = min(100, self.done * 100 // self.total)
        if percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            self.stream.write(f"\r{self.label} [{bar:<25}] {percent:3d}%")
            self.stream.flush()

    def finish(self) -> None:
        if self._shown < 100:
            self.done = self.total
            self.advance(0)
        self.stream.write("\n")
        self.stream.flush()


def counted(items: Iterable[T], bar: ProgressBar | None) -> Iterator[T]:
    """``items``, advancing ``bar`` by one for each."""
    if bar is None:
        yield from items
        return
    for item in items:
        bar.advance()
        yield item


class LineCounter:
    """A binary writer that advances a bar by the number of lines written through it."""

    def __init__(self, out: IO[bytes], bar: ProgressBar) -> None:
        self._out = out
        self._bar = bar

    def write(self, data: bytes) -> int:
        self._bar.advance(data.count(b"\n"))
        return self._out.write(data)
