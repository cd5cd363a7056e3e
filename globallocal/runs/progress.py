"""Progress columns shared by the long commands (evaluate, batch): rates from this session's own time."""

from __future__ import annotations

from rich.progress import (
    ProgressColumn,
    Task,
)
from rich.text import Text


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


class RateColumn(ProgressColumn):
    """Images per second, blank until this session has finished an image."""

    def render(self, task: Task) -> Text:
        rate = _session_rate(task)
        return Text("" if rate is None else f"{rate:.2f} img/s")


class RemainingColumn(ProgressColumn):
    """Time left at this session's rate."""

    def render(self, task: Task) -> Text:
        rate = _session_rate(task)
        if rate is None or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        left = round((task.total - task.completed) / rate)
        return Text(f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}", style="progress.remaining")
