"""The rich implementation of the Progress protocol, used by the CLI only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _RichTask:
    def __init__(self, progress: Progress, task_id):
        self._p, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._id, n)

    def update(self, **fields) -> None:
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._p.update(self._id, info=info)


class RichProgress:
    """Progress bars with throughput on stderr; silent when ``enabled`` is False."""

    def __init__(self, console: Console, *, enabled: bool = True):
        self.console, self.enabled = console, enabled

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_RichTask]:
        columns = [
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            _Speed(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        ]
        with Progress(*columns, console=self.console, disable=not self.enabled, transient=False) as p:
            task_id = p.add_task(description, total=total, info="")
            try:
                yield _RichTask(p, task_id)
            except BaseException:  # the error's one line says what happened; a half-done bar above it would not
                p.update(task_id, visible=False)
                raise

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)


class _Speed(TextColumn):
    def __init__(self):
        super().__init__("")

    def render(self, task):
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} it/s", style="cyan")
