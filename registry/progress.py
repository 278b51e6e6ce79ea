"""Progress reporting for transfers: a rich display for people, nothing for programs.

Push and pull report through the small `Progress` interface; the CLI picks `RichProgress`
for a terminal and `NullProgress` for `--json` (which prints one summary object at the end).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import (
    Progress as RichBar,
)


class Progress(Protocol):
    def note(self, text: str) -> None:
        """A line for the operator (a plan, a phase)."""

    def start(self, key: str, label: str, total: int) -> None:
        """A transfer of `total` bytes begins (or resumes: `advance` may follow at once)."""

    def advance(self, key: str, n: int) -> None: ...

    def restart(self, key: str, total: int) -> None:
        """The transfer starts over from byte 0 (a refetch): `total` more bytes will move, so
        the overall total grows by as much (it never shows 320 of 253 MB)."""

    def finish(self, key: str) -> None: ...


class NullProgress:
    def note(self, text: str) -> None:
        pass

    def start(self, key: str, label: str, total: int) -> None:
        pass

    def advance(self, key: str, n: int) -> None:
        pass

    def restart(self, key: str, total: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


class RichProgress:
    """One overall bar plus a bar per transfer in flight; finished transfers disappear."""

    def __init__(self, total: int, label: str, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._bars = RichBar(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
        self._overall = self._bars.add_task(f"[bold]{label}", total=total)
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            self._bars.live.transient = True  # a failure is reported in one line: no bars left above it
        self._bars.stop()

    def note(self, text: str) -> None:
        self._bars.console.print(text)

    def start(self, key: str, label: str, total: int) -> None:
        with self._lock:
            self._tasks[key] = self._bars.add_task(f"  {label}", total=total)

    def advance(self, key: str, n: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
        if task is not None:
            self._bars.advance(task, n)
        self._bars.advance(self._overall, n)

    def restart(self, key: str, total: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
            overall = self._bars.tasks[self._overall] if self._overall in self._bars.task_ids else None
        if task is not None:
            self._bars.reset(task, total=total)
        if overall is not None and overall.total is not None:
            self._bars.update(self._overall, total=overall.total + total)

    def finish(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            self._bars.remove_task(task)
