"""Progress without a terminal: plain lines, the first one, then at most every LOG_EVERY seconds, and the end."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from globallocal.plurals import counted
from globallocal.runs.batch import lines_failed
from globallocal.runs.progress import LOG_EVERY, LoggedProgress, RateColumn, RemainingColumn, status


def _progress(console, clock, **kwargs):
    columns = (TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), RemainingColumn())
    return LoggedProgress(*columns, console=console, unit="photos", get_time=lambda: clock[0], **kwargs)


def _log():
    text = io.StringIO()
    return text, Console(file=text, width=40)  # a file: no terminal


def _run(progress, clock, times, stop_at=None):
    with progress as bar:
        task = bar.add_task("batch", total=6, completed=1, resumed_at=1, failed=lines_failed(0))
        for count, moment in enumerate(times, start=1):
            clock[0] = moment
            bar.update(task, advance=1, failed=lines_failed(count // 3))
            if count == stop_at:
                break


def test_without_a_terminal_lines_come_first_then_every_few_seconds_and_at_the_end():
    assert LOG_EVERY == 10.0
    text, console = _log()
    clock = [0.0]
    _run(_progress(console, clock), clock, [2.0, 4.0, 13.0, 14.0, 30.0])
    # Not wrapped at the console's width: one line per report, whatever its length.
    assert text.getvalue().splitlines() == [
        "batch: 2/6 photos, 0.50 img/s, eta 8s, 0 lines failed",  # the first, always
        "batch: 4/6 photos, 0.23 img/s, eta 9s, 1 line failed",  # 11 s after it; 4 s was too soon
        "batch: 6/6 photos, 0.17 img/s, eta 0s, 1 line failed",  # the end
    ]


def test_an_interrupted_run_logs_where_it_stopped_and_long_waits_read_in_hours_and_minutes():
    text, console = _log()
    clock = [0.0]
    try:
        with _progress(console, clock) as bar:
            task = bar.add_task("batch", total=400, completed=0, failed="")
            clock[0] = 90.0
            bar.update(task, advance=1)
            clock[0] = 95.0
            bar.update(task, advance=1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert text.getvalue().splitlines() == [
        "batch: 1/400 photos, 0.01 img/s, eta 9h58m",
        "batch: 2/400 photos, 0.02 img/s, eta 5h15m",
    ]
    text, console = _log()
    clock[0] = 0.0
    with _progress(console, clock) as bar:
        task = bar.add_task("batch", total=10, completed=0, failed="")
        clock[0] = 20.0
        bar.update(task, advance=1)
    assert text.getvalue().splitlines() == ["batch: 1/10 photos, 0.05 img/s, eta 3m00s"]


def test_a_terminal_gets_the_bar_and_a_disabled_progress_nothing():
    text = io.StringIO()
    clock = [0.0]
    _run(_progress(Console(file=text, force_terminal=True, width=120), clock), clock, [2.0, 30.0])
    assert "━" in text.getvalue() and "photos, " not in text.getvalue()
    text, console = _log()
    _run(_progress(console, clock, disable=True), clock, [2.0, 30.0])
    assert text.getvalue() == ""


def test_a_step_is_a_line_in_a_log_and_a_spinner_on_a_terminal():
    text, console = _log()
    with status(console, "scoring 12 proposals...", "segment"):
        console.print("inside")
    assert text.getvalue().splitlines() == ["segment: scoring 12 proposals...", "inside"]
    text = io.StringIO()
    with status(Console(file=text, force_terminal=True), "scoring 12 proposals...", "segment"):
        pass
    assert "segment: " not in text.getvalue()


def test_counts_read_as_english_in_one_home():
    assert [counted(n, "sentence") for n in (0, 1, 2)] == ["0 sentences", "1 sentence", "2 sentences"]
    assert counted(1.0, "CPU") == "1 CPU" and counted(2.5, "GPU") == "2.5 GPUs"
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"
    assert lines_failed(1) == "1 line failed"
