"""Reading a batch manifest: (photo, phrase) pairs as JSON lines or CSV.

One line (a JSON object, or a CSV row under a header) names::

    image     the photo; a relative path is relative to the manifest's folder
    phrase    one referring expression, or
    phrases   several (JSON: a list; CSV: a JSON list in the cell)
    id        optional: the output's name (default: the line number)
    masks     optional: mask proposals for this photo (a folder of PNGs, a PNG, or an RLE .json)

Each phrase is one output, named by the line's ``id`` when the line has one
phrase and ``<id>_<k>`` (k = 1, 2, ...) when it has several, as ``segment``
numbers its outputs. A line that cannot be used (not an object, no image, an
empty phrase, an id used before, ...) becomes a :class:`LineError` and the
others go on.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .bounded import MAX_JSON_BYTES, JsonError, iter_json_lines, parse_json, read_regular
from .phrases import check_output_id, clean_phrase

__all__ = ["MANIFEST_SUFFIXES", "BatchLine", "LineError", "Manifest", "read_manifest"]

MANIFEST_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
_COLUMNS = ("image", "phrase", "phrases", "id", "masks")


@dataclass(frozen=True)
class BatchLine:
    """A usable manifest line: its outputs are ``zip(output_ids, phrases)``."""

    line: int
    id: str
    image: Path
    phrases: tuple[str, ...]
    masks: Path | None
    key: str = field(init=False, repr=False, compare=False)
    """What the line asks, whatever its place in the file: a hash of its resolved photo and masks, phrases and id.
    ``batch`` records each output under it, so a rerun after other lines were edited, added, removed or moved
    reuses this one's work (a line without an id is named by its number, so moving it changes its id)."""

    def __post_init__(self) -> None:
        # Computed where the manifest is read, so Ray actors that mount the photos elsewhere record the same key.
        masks = str(self.masks.resolve()) if self.masks else None
        asked = [str(self.image.resolve()), list(self.phrases), self.id, masks]
        object.__setattr__(self, "key", hashlib.sha256(json.dumps(asked).encode("utf-8")).hexdigest()[:24])

    @property
    def output_ids(self) -> tuple[str, ...]:
        if len(self.phrases) == 1:
            return (self.id,)
        return tuple(f"{self.id}_{k}" for k in range(len(self.phrases)))  # 0-based, like every other number


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "error": self.reason}


@dataclass
class Manifest:
    path: Path
    lines: list[BatchLine]
    errors: list[LineError]

    @property
    def line_count(self) -> int:
        return len(self.lines) + len(self.errors)


def _rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, raw row) of every non-blank line; a raw row is a dict, or a str saying what is wrong.

    Each JSON line is read and parsed on its own, within the bounds of
    :mod:`globallocal.data.bounded`, so one unusable line (deeply nested,
    huge numbers, megabytes long) is that line's error, not the manifest's.
    """
    if MANIFEST_SUFFIXES[path.suffix.lower()] == "csv":
        return _csv_rows(path)
    return [(number, str(row) if isinstance(row, JsonError) else row)
            for number, row in iter_json_lines(path, what="manifest")]


def _csv_rows(path: Path) -> list[tuple[int, Any]]:
    try:
        text = read_regular(path, MAX_JSON_BYTES, what="manifest").decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"manifest {path} is not UTF-8 text: {error}") from None
    read = 0  # lines the reader has taken: a row's number is that of its last line, as for a good row

    def counted(lines: list[str]) -> Iterator[str]:
        nonlocal read
        for line in lines:
            read += 1
            yield line

    reader = csv.DictReader(counted(text.splitlines()))
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise InputError(f"manifest {path} line 1 (the CSV header): {_csv_problem(error)}") from None
    unknown = [name for name in header if name not in _COLUMNS]
    if "image" not in header or not {"phrase", "phrases"} & set(header) or unknown:
        raise InputError(
            f"manifest {path}: the CSV header must name image and phrase (or phrases), and may add id and "
            f"masks; got {', '.join(header) or 'nothing'}"
        )
    rows: list[tuple[int, Any]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as error:  # that row alone: the reader goes on with the next line
            rows.append((read, _csv_problem(error)))
            continue
        # Empty cells are absent values; a row with more cells than the header is malformed.
        if None in row:
            rows.append((reader.line_num, "more cells than the header has columns"))
            continue
        rows.append((reader.line_num, {key: value for key, value in row.items() if value not in ("", None)}))


def _csv_problem(error: csv.Error) -> str:
    if "field limit" in str(error):  # csv's own bound (128 KiB), which holds every real phrase or path
        return f"a cell is longer than {csv.field_size_limit() >> 10} KiB, the most a CSV cell may hold"
    return f"not a CSV row ({error})"


def _phrases(raw: dict[str, Any], from_csv: bool) -> tuple[str, ...]:
    if ("phrase" in raw) == ("phrases" in raw):
        raise ValueError("give either phrase or phrases")
    if "phrase" in raw:
        phrases = [raw["phrase"]]
    else:
        phrases = raw["phrases"]
        if from_csv:
            try:
                phrases = parse_json(phrases, "the phrases cell")
            except JsonError as error:
                raise ValueError(f'{error}; phrases must be a JSON list in CSV, e.g. ["the cat", "the dog"]') \
                    from None
        if not isinstance(phrases, list) or not phrases:
            raise ValueError("phrases must be a non-empty list")
    try:
        return tuple(clean_phrase(phrase) for phrase in phrases)
    except InputError as error:
        raise ValueError(str(error)) from None


def _identifier(raw: dict[str, Any], number: int) -> str:
    if "id" not in raw:
        return str(number)
    return check_output_id(raw["id"])


def _path(value: Any, key: str, folder: Path) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"{key} must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def read_manifest(path: str | Path) -> Manifest:
    """Every line of a manifest, usable or not. Raises :class:`InputError` only for the file as a whole."""
    path = Path(path)
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise InputError(f"manifest {path} must end in .jsonl (JSON lines) or .csv")
    if not path.exists():
        raise InputError(f"manifest not found: {path}")
    folder = path.resolve().parent
    from_csv = MANIFEST_SUFFIXES[path.suffix.lower()] == "csv"
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    owners: dict[str, int] = {}
    for number, raw in _rows(path):
        if isinstance(raw, str) or not isinstance(raw, dict):
            errors.append(LineError(number, raw if isinstance(raw, str) else "not a JSON object"))
            continue
        identifier = None
        try:
            identifier = _identifier(raw, number)
            unknown = sorted(set(raw) - set(_COLUMNS))
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r}; use {', '.join(_COLUMNS)}")
            if "image" not in raw:
                raise ValueError("no image")
            item = BatchLine(
                line=number,
                id=identifier,
                image=_path(raw["image"], "image", folder),
                phrases=_phrases(raw, from_csv),
                masks=_path(raw["masks"], "masks", folder) if "masks" in raw else None,
            )
            taken = [output for output in item.output_ids if output in owners]
            if taken:
                raise ValueError(f"duplicate id: {taken[0]!r} is already the output of line {owners[taken[0]]}")
        except ValueError as error:
            errors.append(LineError(number, str(error), identifier))
            continue
        owners.update(dict.fromkeys(item.output_ids, number))
        lines.append(item)
    if not lines and not errors:
        raise InputError(f"manifest {path} has no lines")
    return Manifest(path, lines, errors)
