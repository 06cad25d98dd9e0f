"""A minimal progress protocol so compute and stages can report without knowing about rich."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def update(self, **fields) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> contextmanager[Task]: ...

    def log(self, message: str) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **fields) -> None:
        pass


class NullProgress:
    """Progress that reports nothing: the default for library use and tests."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_NullTask]:
        yield _NullTask()

    def log(self, message: str) -> None:
        pass


NULL = NullProgress()
