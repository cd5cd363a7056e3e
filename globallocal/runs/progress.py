"""Progress of the long commands (evaluate, batch) and segment's stages: a live display on a terminal, plain lines
in a log.

Without a terminal (stderr sent to a file, CI, a job scheduler) rich draws
nothing until the end, and a spinner nothing at all, so a log would show no
sign of life for hours. :class:`LoggedProgress` and :func:`status` are the one
home of that choice: on a terminal rich's bar and spinner as ever; otherwise
a line like ``batch: 12/500 photos, 3.10 img/s, eta 2m40s, 1 line failed``
for the first finished item, then at most every :data:`LOG_EVERY` seconds,
and at the end. Rates count this session's own time and items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

__all__ = ["LOG_EVERY", "LoggedProgress", "RateColumn", "RemainingColumn", "status"]

LOG_EVERY = 10.0
"""Seconds between two progress lines in a log: often enough to see a run alive, rarely enough to read it."""


def _session_rate(task: Task) -> float | None:
    """Images per second over this session's own elapsed time.

    rich's ``task.speed`` only looks at a short window of recent updates and
    stays blank when one image takes longer than that window, which on a CPU
    is every image; the images finished before a resume do not count.
    """
    done = task.completed - task.fields.get("resumed_at", 0)
    if not task.elapsed or done <= 0:
        return None
    return done / task.elapsed


def _remaining(task: Task) -> int | None:
    """Whole seconds left at this session's rate (None until it has one)."""
    rate = _session_rate(task)
    if rate is None or task.total is None:
        return None
    return round((task.total - task.completed) / rate)


def _duration(seconds: int) -> str:
    """'45s', '2m40s', '3h05m': a log line's time left, as short as its size allows."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RateColumn(ProgressColumn):
    """Images per second, blank until this session has finished an image."""

    def render(self, task: Task) -> Text:
        rate = _session_rate(task)
        return Text("" if rate is None else f"{rate:.2f} img/s")


class RemainingColumn(ProgressColumn):
    """Time left at this session's rate."""

    def render(self, task: Task) -> Text:
        left = _remaining(task)
        if left is None:
            return Text("-:--:--", style="progress.remaining")
        return Text(f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}", style="progress.remaining")


class LoggedProgress(Progress):
    """rich's :class:`~rich.progress.Progress` on a terminal; elsewhere no live display but plain lines.

    A line names the task's description, its count of ``unit``, this
    session's rate and time left, then what the text columns after the first
    show (the first shows the description). ``every``: the most seconds
    between lines; ``get_time``: the clock (tests pass a fake one).
    """

    def __init__(
        self,
        *columns: str | ProgressColumn,
        console: Console,
        unit: str,
        disable: bool = False,
        every: float = LOG_EVERY,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        self._logging = not disable and not console.is_terminal
        super().__init__(*columns, console=console, disable=disable or self._logging, get_time=get_time)
        self.unit, self.every = unit, every
        self._logged: dict[TaskID, tuple[float, float] | None] = {}  # (when, completed) of each task's last line

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        self._logged[task] = None
        return task

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if not self._logging:
            return
        task, logged, now = self._task(task_id), self._logged[task_id], self.get_time()
        if logged is None or now - logged[0] >= self.every or task.finished:
            self._log(task, now)

    def stop(self) -> None:
        """The end: each task's last state, unless its last line showed it."""
        super().stop()
        if self._logging:
            for task_id in self._logged:
                self._log(self._task(task_id), self.get_time())

    def _task(self, task_id: TaskID) -> Task:
        return next(task for task in self.tasks if task.id == task_id)

    def line(self, task: Task) -> str:
        """What the log shows of ``task`` now."""
        parts = [f"{task.description}: {task.completed:g}/{task.total:g} {self.unit}"]
        rate, left = _session_rate(task), _remaining(task)
        if rate is not None and left is not None:
            parts.append(f"{rate:.2f} img/s, eta {_duration(left)}")
        texts = [column for column in self.columns if isinstance(column, TextColumn)][1:]
        parts += [text for column in texts if (text := column.render(task).plain)]
        return ", ".join(parts)

    def _log(self, task: Task, now: float) -> None:
        """Print the task's line, unless the last one already showed its count."""
        logged = self._logged[task.id]
        if logged is not None and logged[1] == task.completed:
            return
        self._logged[task.id] = (now, task.completed)
        self.console.print(self.line(task), highlight=False, soft_wrap=True)


@contextmanager
def status(console: Console, text: str, command: str) -> Iterator[None]:
    """A spinner with ``text`` on a terminal; in a log, the line '``command``: ``text``' once, as the step starts."""
    if console.is_terminal:
        with console.status(text):
            yield
        return
    console.print(f"{command}: {text}", highlight=False, soft_wrap=True)
    yield
