"""A run folder: resumable, append-only records that one run at a time may write.

The layout shared by ``evaluate`` and ``batch``::

    <run>/run.lock                  held (flock) by the run's main process; names the holder
    <run>/config.json               what the run computes, compared on every resume
    <run>/records.jsonl             one JSON line per result, then a unit-done marker line
    <run>/records.rank<R>.jsonl     the same, one file per process under torchrun

Work is done in *units* (an image and all its phrases): the unit's records
are appended, then a marker line such as ``{"image_done": 42, "sentences":
3, ...}``, and the file is fsynced. A run killed at any moment loses at most
the unit it was working on: on reopening, the file is cut back to its last
marker. A damaged line *before* the last marker is not something an
interruption produces, so it is refused rather than repaired.

Two runs on one folder would both do all the work and then find every unit
twice; so the main process takes an exclusive ``flock`` on ``run.lock`` (the
kernel releases it when the process dies, however it dies, so a killed run
never blocks the next) and every process also locks its own records file. A
second run is refused at once, naming the holder's pid, host and start time.
Records files are opened without following symbolic links, and temporary
files that a killed run left from atomic writes (``.<name>.*.tmp``) are
removed when the folder is opened under the lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..data.bounded import (
    MAX_LINE_BYTES,
    JsonError,
    Shape,
    check_shape,
    json_text,
    open_regular,
    parse_json,
    read_json,
)
from ..data.images import check_writable_folder, remove_write_orphans, save_bytes, save_text
from ..errors import InputError

__all__ = [
    "CONFIG_FILE",
    "LOCK_FILE",
    "RECORDS_FILE",
    "CompletedUnit",
    "RunFolder",
    "UnitLayout",
    "UnitResult",
    "check_free",
    "is_retry",
    "read_completed",
    "read_config",
    "records_file",
]

RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
_RECORDS_NAME = re.compile(r"records(\.rank\d+)?\.jsonl")
_FIX = "use another --out or delete that directory"


@dataclass(frozen=True)
class UnitLayout:
    """How a unit's marker line names the unit and counts its records.

    ``marker``: the key of the marker line holding the unit's key (e.g.
    ``image_done``); ``member``: the key every record of the unit carries
    with the same value (e.g. ``image_id``); ``count``: the marker's key for
    the number of records (e.g. ``sentences``); ``record``: the shape every
    record must have when read back (a damaged or foreign file is refused
    naming the line's key instead of failing later); ``output_folders``: the
    folders under the run folder that units write their files into, cleared
    with it of a killed run's temporary files (not every subfolder: one may be
    a feature cache that other runs are writing to).
    """

    marker: str
    member: str
    count: str
    record: Shape = dict  # what every record must hold, checked when read back (bounded.check_shape)
    output_folders: tuple[str, ...] = ()


@dataclass
class UnitResult:
    """What one unit's work gives the process that writes the run folder.

    ``records`` and ``marker`` as :meth:`RunFolder.append` takes them (the
    marker holds the unit's key under the layout's marker key); ``files``:
    encoded outputs (PNG bytes) by path relative to the folder they go to.
    Computed wherever the unit ran (this process or a Ray actor), written by
    the one process holding the folder, so both write the same bytes.
    """

    key: Any
    records: list[dict[str, Any]]
    marker: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class CompletedUnit:
    """One fully recorded unit: its marker line and its records."""

    marker: dict[str, Any]
    records: list[dict[str, Any]]


def records_file(rank: int = 0, world_size: int = 1) -> str:
    """The records file one process appends to: records.jsonl alone, records.rank<R>.jsonl under torchrun."""
    return RECORDS_FILE if world_size == 1 else f"records.rank{rank}.jsonl"


def _records_paths(directory: Path) -> list[Path]:
    """Every records file of a run folder (its sessions may have used different numbers of processes)."""
    return sorted(path for path in directory.iterdir() if _RECORDS_NAME.fullmatch(path.name))


def _open_nofollow(path: Path, flags: int) -> int:
    """Open a run-folder file without following a symbolic link (its target would be truncated and overwritten)
    or blocking: anything but a regular file (a FIFO would hang the run) is refused."""
    try:
        return open_regular(path, flags, what="run-folder file", follow=False)
    except InputError as error:
        raise InputError(f"{error}; {_FIX}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _parse(data: bytes, path: Path, layout: UnitLayout) -> tuple[list[CompletedUnit], int]:
    """The complete units of a records file's bytes, and the byte offset just after the last marker."""
    completed: dict[Any, CompletedUnit] = {}
    pending: list[dict[str, Any] | None] = []
    damage: str | None = None  # why the first unreadable line since the last marker is unreadable
    keep = position = 0
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        position += len(line) + 1
        try:
            entry = parse_json(line, f"line {number}")
        except JsonError as error:
            entry, damage = None, damage or str(error)
        if not isinstance(entry, dict):
            damage = damage or f"line {number} is not a JSON object"
        if isinstance(entry, dict) and layout.marker in entry:
            key = entry[layout.marker]
            if (
                any(record is None for record in pending)
                or len(pending) != entry.get(layout.count)
                or any(record.get(layout.member) != key for record in pending)
                or not isinstance(key, (int, str))
                or (key in completed and not is_retry(completed[key]))
            ):
                reason = f" ({damage})" if damage else ""
                raise InputError(f"{path} is damaged before line {number}{reason}; {_FIX}")
            for record in pending:
                check_shape(record, layout.record, f"{path} (unit {key})", f"; {_FIX}")
            completed[key] = CompletedUnit(entry, [record for record in pending if record is not None])
            pending, damage = [], None
            keep = position
        else:
            pending.append(entry if isinstance(entry, dict) else None)
    if damage:
        # Only what a killed append leaves may follow the last marker: complete records and an unfinished last
        # line (never read: it has no newline). A complete line that is not a record was put there otherwise.
        raise InputError(f"{path} is damaged after its last complete unit ({damage}); remove the lines after "
                         f"the last marker to resume, or {_FIX}")
    return list(completed.values()), keep


def is_retry(unit: CompletedUnit) -> bool:
    """Whether a unit was recorded with answers to ask again (``"retry": true`` in its marker: an endpoint did
    not answer): a later run records it anew, and that recording replaces this one."""
    return unit.marker.get("retry") is True


def read_completed(directory: str | Path, layout: UnitLayout) -> list[CompletedUnit]:
    """The complete units of every records file of a run folder, read only (no lock, nothing cut).

    What follows a file's last marker is ignored (its owner may be appending
    to it right now). A unit recorded twice means two runs shared the folder
    at once, which is refused, unless one of the two is a retry
    (:func:`is_retry`): the other one stands.
    """
    directory = Path(directory)
    completed: dict[Any, tuple[CompletedUnit, Path]] = {}
    for path in _records_paths(directory):
        found, _ = _parse(_read_bytes(path), path, layout)
        for unit in found:
            key = unit.marker[layout.marker]
            if key in completed:
                earlier, where = completed[key]
                if not (is_retry(earlier) or is_retry(unit)):
                    raise InputError(f"{layout.marker} {key} is recorded in both {where.name} and {path.name}; "
                                     f"{_FIX}")
                if is_retry(unit):
                    continue
            completed[key] = (unit, path)
    return [unit for unit, _ in completed.values()]


def read_config(directory: str | Path) -> dict[str, Any]:
    """A run folder's config.json: a regular file holding a JSON object within the bounds, else one line."""
    path = Path(directory) / CONFIG_FILE
    try:
        stored = read_json(path, what="run configuration", max_bytes=MAX_LINE_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path} is missing; {_FIX}") from None
    except InputError as error:
        raise InputError(f"{error}; {_FIX}") from None
    check_shape(stored, {}, str(path), f"; {_FIX}")
    return stored


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as the holder wrote it into the lock file."""
    try:
        info = read_json(lock_path, what="lock file", max_bytes=4096)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, InputError, KeyError, TypeError):
        return "another process"


def _lock(fd: int, path: Path, what: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(
            f"{what} is in use by another run ({_holder(path)}); wait for it to finish or use another --out"
        ) from None


def check_free(directory: str | Path) -> None:
    """Before any model loads: the run folder is a writable folder that no other run holds."""
    directory = check_writable_folder(directory, "run folder")
    path = directory / LOCK_FILE
    if not path.exists():
        return
    fd = _open_nofollow(path, os.O_RDONLY)
    _lock(fd, path, f"run folder {directory}")
    os.close(fd)


_SHOWN_DIFFERENCES = 8
_SHOWN_VALUE = 60


_NOT_SET = object()


def _shortened(value: Any) -> str:
    if value is _NOT_SET:
        return "(not set)"
    text = json.dumps(value)
    return text if len(text) <= _SHOWN_VALUE else f"{text[:_SHOWN_VALUE - 3]}..."


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """'key: run VALUE, now VALUE' for every differing leaf key, nested settings named by their dotted path,
    values shortened (a section set on one side only is one line)."""
    found = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key, _NOT_SET), current.get(key, _NOT_SET)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
            continue
        found.append(f"{prefix}{key}: run {_shortened(old)}, now {_shortened(new)}")
    return found


def _listed(differences: list[str]) -> str:
    """The differences one per line (the first few; a count of the rest)."""
    shown = differences[:_SHOWN_DIFFERENCES]
    more = len(differences) - len(shown)
    return "".join(f"\n  {line}" for line in shown) + (f"\n  ... {more} more" if more else "")


class RunFolder:
    """One process's handle on a run folder (see the module docstring).

    ``main`` (rank 0, or the only process) takes the folder lock, removes
    orphan temporary files and writes config.json; every process locks and
    appends to its own records file (``rank``, ``world_size``). Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self, directory: str | Path, layout: UnitLayout, *, rank: int = 0, world_size: int = 1, main: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.layout = layout
        self.main = main
        self.records_path = self.directory / records_file(rank, world_size)
        self._lock_fd: int | None = None
        self._records: BinaryIO | None = None
        if main:
            self._take_folder_lock()

    def _take_folder_lock(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(f"run folder {self.directory} is a file; give a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT)
        _lock(fd, path, f"run folder {self.directory}")
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8"), 0)
        self._lock_fd = fd
        # Nobody else writes here while the lock is held.
        for folder in (self.directory, *(self.directory / name for name in self.layout.output_folders)):
            remove_write_orphans(folder, recursive=False)


    def check_config(
        self, identity: dict[str, Any], explain: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None
    ) -> None:
        """Refuse a folder of another configuration; the main process writes config.json when there is none.

        ``explain(stored, identity)`` may give a more precise reason than the
        list of differing keys (e.g. which weights file changed, and how).
        """
        path = self.directory / CONFIG_FILE
        if path.exists() or path.is_symlink():
            stored = read_config(self.directory)
            if stored == identity:
                return
            reason = explain(stored, identity) if explain is not None else None
            if reason is None:
                raise InputError(f"{self.directory} holds a run with a different configuration; {_FIX}; it differs "
                                 f"in:{_listed(_differences(stored, identity))}")
            raise InputError(f"{self.directory} holds a run with {reason}; {_FIX}")
        if _records_paths(self.directory):
            raise InputError(f"{self.directory} holds records but no {CONFIG_FILE}; {_FIX}")
        if not self.main:
            raise InputError(f"{path} is missing although rank 0 should have written it")
        save_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", path)

    def open_records(self) -> list[CompletedUnit]:
        """Lock this process's records file, cut it back to its last marker, and return its complete units."""
        fd = _open_nofollow(self.records_path, os.O_RDWR | os.O_CREAT)
        _lock(fd, self.records_path, f"{self.records_path}")
        handle = os.fdopen(fd, "r+b")
        data = handle.read()
        completed, keep = _parse(data, self.records_path, self.layout)
        if keep != len(data):
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        handle.seek(keep)
        self._records = handle
        return completed

    def read_completed(self) -> list[CompletedUnit]:
        """The complete units of every records file (this process's file must be open: it is cut back first)."""
        if self._records is None:
            raise RuntimeError("open_records() first")
        return read_completed(self.directory, self.layout)

    def append(self, records: list[dict[str, Any]], marker: dict[str, Any]) -> None:
        """Append a unit's records and its marker (the key and count are added), then fsync."""
        if self._records is None:
            raise RuntimeError("open_records() first")
        key = marker[self.layout.marker]
        if any(record.get(self.layout.member) != key for record in records):
            raise ValueError(f"every record of unit {key} must carry {self.layout.member}={key!r}")
        lines = [json_text(record) for record in records]
        lines.append(json_text({**marker, self.layout.count: len(records)}))
        self._records.write(("\n".join(lines) + "\n").encode("utf-8"))
        self._records.flush()
        os.fsync(self._records.fileno())

    def record(self, result: UnitResult, files_root: Path | None) -> None:
        """Write a unit's files under ``files_root`` (atomically), then append its records and marker.

        Files first: a run killed in between redoes the unit and rewrites them, never records a missing file.
        """
        for name, data in result.files.items():
            if files_root is None:
                raise ValueError(f"unit {result.key} has files but the run writes none")
            save_bytes(data, files_root / name)
        self.append(result.records, result.marker)

    def close(self) -> None:
        """Close the records file and release the locks (the kernel does both if the process dies)."""
        if self._records is not None:
            self._records.close()
            self._records = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
