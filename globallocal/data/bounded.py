"""Bounded reading of the files a user gives: regular files only, sizes bounded, JSON checked as data.

Every JSON and JSON-lines file the tool reads (mask indexes and COCO files,
manifests, instances.json and PhraseCut files, run-folder config and records,
report.json, the weights memo, uploads, CLIP config files) goes through
:func:`parse_json`:

- the file is opened without blocking and refused unless it is a regular
  file (a FIFO would hang the reader forever), and its size is bounded
  before a byte is read;
- containers nest at most :data:`MAX_DEPTH` levels (deeper input would
  exhaust Python's stack in the parser or in any code walking the value);
- integers fit in 64 bits and floats are finite (``Infinity``, ``1e400`` and
  400-digit numbers overflow wherever they are used as sizes or ids);
- strings hold no lone UTF-16 surrogates (``"\\ud800"`` cannot be written
  out as UTF-8 again).

A violation is one :class:`~globallocal.errors.InputError` line naming the
file, the line (JSON lines) and the key.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "INT64",
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "MAX_LINE_BYTES",
    "MAX_MEGAPIXELS",
    "MAX_PIXELS",
    "MAX_SHORT_SIDE",
    "NUMBER",
    "PIXELS_VARIABLE",
    "JsonError",
    "Shape",
    "check_shape",
    "iter_json_lines",
    "json_text",
    "key_path",
    "open_regular",
    "parse_json",
    "read_json",
    "read_regular",
]

# Deep enough for every format the tool reads (COCO polygons nest 4 levels, run configurations about 6).
MAX_DEPTH = 32
# Ids, sizes and counts are int64 everywhere downstream (numpy, pycocotools, torch): every integer read (JSON,
# pickles, options) must be one.
INT64 = range(-(2**63), 2**63)
# The largest files read (a dataset's instances.json, PhraseCut's refer_test.json) are a few hundred MB; Python
# holds parsed JSON in several times its size.
MAX_JSON_BYTES = 1 << 30
# A manifest or records line: a photo, a few phrases and paths, or one result.
MAX_LINE_BYTES = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")
# The largest short side a photo is resized to (--short-side; the paper's is 800): memory grows with its square.
MAX_SHORT_SIDE = 2048
# The largest photo (and mask) the pipeline can process within the memory bench/memory.py documents: 24
# megapixels (6000x4000) peak at 3.4 GB in FreeSOLO's post-processing, 100 full-size masks being 2.3 GB of it.
# Memory grows with the pixels, so every command (serve's uploads too) refuses a larger picture;
# GLOBALLOCAL_MAX_PIXELS raises it. Here, not in data.images, so the command line reads it without Pillow.
PIXELS_VARIABLE = "GLOBALLOCAL_MAX_PIXELS"
MAX_PIXELS = int(os.environ.get(PIXELS_VARIABLE, "") or 25_000_000)
MAX_MEGAPIXELS = MAX_PIXELS / 1_000_000


class JsonError(InputError):
    """A JSON text that is malformed or outside the bounds; the message names where."""


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:g} {unit}"
    return f"{count} bytes"


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, *, what: str = "file",
                 follow: bool = True, mode: int = 0o644) -> int:
    """``os.open`` of a regular file, never blocking: a FIFO, device or folder is refused in one line.

    ``follow=False`` also refuses a symbolic link (its target would be
    overwritten). The descriptor is returned in blocking mode.
    """
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow:
            raise InputError(f"{what} {path} is a symbolic link; refusing to follow it") from None
        if error.errno in (errno.EISDIR, errno.ENXIO):
            raise InputError(f"{what} {path} is not a regular file; give a file") from None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        name = "a folder" if stat.S_ISDIR(kind) else "a FIFO" if stat.S_ISFIFO(kind) else "not a regular file"
        raise InputError(f"{what} {path} is {name}; give a regular file")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: str | os.PathLike[str], max_bytes: int, *, what: str = "file", hint: str = "") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading); ``hint``: how to raise it.

    What is read is what the file holds: ``read(n)`` allocates ``n`` bytes up front, so asking for the bound
    (201 MB for a photo) would cost that much memory for every small file.
    """
    fd = open_regular(path, what=what)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise InputError(f"{what} {path} is {_size(size)}, more than the {_size(max_bytes)} allowed{hint}")
        data = handle.read(size + 1)
        while size < len(data) <= max_bytes:  # growing while read: the rest a bounded piece at a time
            piece = handle.read(min(1 << 20, max_bytes + 1 - len(data)))
            if not piece:
                break
            data += piece
    if len(data) > max_bytes:
        raise InputError(f"{what} {path} is more than the {_size(max_bytes)} allowed{hint}")
    return data


def key_path(keys: tuple[Any, ...]) -> str:
    """``annotations[3].segmentation`` for the keys (str) and indices (int) leading to a value."""
    if len(keys) > 8:  # a deeply nested value: where it starts is enough
        return f"{key_path(keys[:4])}... ({len(keys)} levels down)"
    text = "".join(f"[{key}]" if isinstance(key, int) else f".{key!s:.40}" for key in keys)
    return text.lstrip(".") or "the top level"


def _problem(value: Any) -> str | None:
    """Why a scalar is outside the bounds, or None."""
    kind = type(value)
    if kind is float and not math.isfinite(value):
        return f"holds a number that is not finite ({value})"
    if kind is int and value not in INT64:
        return "holds an integer beyond 64 bits"
    if kind is str and not value.isascii() and _SURROGATE.search(value):
        return "holds a string with a lone UTF-16 surrogate (not valid Unicode)"
    return None


def _check(value: Any, max_depth: int) -> tuple[str, tuple[Any, ...]] | None:
    """(problem, key path) of the first value outside the bounds, walked without recursion."""
    if type(value) is not dict and type(value) is not list:
        problem = _problem(value)
        return (problem, ()) if problem else None
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        node, keys = stack.pop()
        if len(keys) >= max_depth:
            return f"nests containers more than {max_depth} levels deep", keys
        items = node.items() if type(node) is dict else enumerate(node)
        for key, item in items:
            if type(key) is str and not key.isascii() and _SURROGATE.search(key):
                return "holds a key with a lone UTF-16 surrogate (not valid Unicode)", keys
            if type(item) is dict or type(item) is list:
                stack.append((item, (*keys, key)))
                continue
            problem = _problem(item)
            if problem:
                return problem, (*keys, key)
    return None


def _nan_as_null(name: str) -> float | None:
    return None if name == "NaN" else float(name)


def parse_json(text: str | bytes, where: str, *, max_depth: int = MAX_DEPTH, nan_as_null: bool = False) -> Any:
    """One JSON value within the bounds (module docstring); :class:`JsonError` naming ``where`` and the key.

    ``nan_as_null``: read ``NaN`` (not JSON, but what many writers put for an undefined number) as null, where
    the reader takes null for "undefined"; ``Infinity`` is refused all the same.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        # NaN and Infinity become floats, refused below with their key.
        value = json.loads(text, parse_constant=_nan_as_null) if nan_as_null else json.loads(text)
    except UnicodeDecodeError as error:
        raise JsonError(f"{where} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise JsonError(f"{where} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") \
            from None
    except RecursionError:
        raise JsonError(f"{where} nests containers more than {max_depth} levels deep") from None
    except ValueError:  # an integer of over 4300 digits
        raise JsonError(f"{where} holds an integer of thousands of digits; integers must fit in 64 bits") from None
    found = _check(value, max_depth)
    if found:
        problem, keys = found
        raise JsonError(f"{where} {problem} at {key_path(keys)}")
    return value


def read_json(path: str | os.PathLike[str], *, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH, nan_as_null: bool = False) -> Any:
    """The checked JSON value of a regular file of at most ``max_bytes`` (``nan_as_null``: see :func:`parse_json`)."""
    data = read_regular(path, max_bytes, what=what)
    return parse_json(data, f"{what} {path}", max_depth=max_depth, nan_as_null=nan_as_null)


def _finite(value: Any) -> Any:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps`` of a value the tool will read back (``options`` are json.dumps's): a number that is not
    finite (an undefined metric, a score of nothing) is written as null, since JSON has no NaN and the reader
    refuses one."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def iter_json_lines(
    path: str | os.PathLike[str], *, what: str = "file", max_line_bytes: int = MAX_LINE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Iterator[tuple[int, Any]]:
    """(line number, value or :class:`JsonError`) of every non-blank line, read one bounded line at a time.

    A bad line is yielded as its error, so the caller decides whether it ends
    the file (a run's records) or only that line (a batch manifest); a line
    longer than ``max_line_bytes`` is skipped without being held in memory.
    """
    fd = open_regular(path, what=what)
    with os.fdopen(fd, "rb") as handle:
        number = 0
        while True:
            line = handle.readline(max_line_bytes + 1)
            if not line:
                return
            number += 1
            where = f"{what} {Path(path).name} line {number}"
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # the rest of the long line, a bounded piece at a time
                    line = handle.readline(max_line_bytes)
                yield number, JsonError(f"{where} is longer than {_size(max_line_bytes)}")
                continue
            if not line.strip():
                continue
            try:
                yield number, parse_json(line, where, max_depth=max_depth)
            except JsonError as error:
                yield number, error


# ---- shapes: a value read back checked to be what the code reading it expects ----------------------------------

# A type or tuple of types; {key: Shape} ("key?": optional; "*": every value; other keys allowed); [Shape].
Shape = Any
NUMBER = (int, float)


def _describe(shape: Shape) -> str:
    if isinstance(shape, dict):
        return "an object"
    if isinstance(shape, list):
        return "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             dict: "an object", list: "a list"}
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if float in kinds:
        kinds = tuple(kind for kind in kinds if kind is not int)
    return " or ".join(names.get(kind, kind.__name__) for kind in kinds)


def _fits(value: Any, shape: Shape) -> bool:
    if isinstance(shape, dict):
        return isinstance(value, dict)
    if isinstance(shape, list):
        return isinstance(value, list)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON's true is not the number 1
    return isinstance(value, kinds)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_shape(value: Any, shape: Shape, where: str, fix: str = "", at: tuple[Any, ...] = ()) -> None:
    """Refuse ``value`` unless it has ``shape``: one line naming ``where``, the key and what it should be.

    ``fix`` is appended to the message (e.g. "; rerun the evaluation"); ``at``: the keys leading to ``value``
    in its file, named before its own.
    """
    stack: list[tuple[Any, Shape, tuple[Any, ...]]] = [(value, shape, tuple(at))]
    while stack:
        node, expected, keys = stack.pop()
        if not _fits(node, expected):
            raise InputError(f"{where}: {key_path(keys)} must be {_describe(expected)}, got {_short(node)}{fix}")
        children: list[tuple[Any, Shape, tuple[Any, ...]]] = []
        if isinstance(expected, dict):
            for name, inner in expected.items():
                key = name.rstrip("?")
                if name == "*":
                    children += [(item, inner, (*keys, key)) for key, item in node.items()]
                elif key in node:
                    children.append((node[key], inner, (*keys, key)))
                elif not name.endswith("?"):
                    raise InputError(f"{where}: {key_path((*keys, key))} is missing{fix}")
        elif isinstance(expected, list):
            children = [(item, expected[0], (*keys, index)) for index, item in enumerate(node)]
        stack.extend(reversed(children))  # the first problem in the shape's order is the one named
