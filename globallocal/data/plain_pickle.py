"""Reading REFER's refs pickles as plain data: no code, no expansion bombs.

The refs files are Python 2 pickles of lists and dicts. Unpickling them with
the standard unpickler could run code; the unpickler here resolves no class
or function at all. That makes a hostile file inert but not small: pickle's
memo lets a 300-byte file reference one list from many places, many levels
deep, and turning that into plain data (bytes to str) copies every path,
which is exponential. So the conversion walks the data with a budget:
at most ``_MAX_DEPTH`` levels, and at most about two nodes per byte of the
file (a pickle without shared containers never needs more: every list, dict,
string or number costs at least one opcode byte). Anything beyond is refused
at once, naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import InputError
from .bounded import MAX_JSON_BYTES, read_regular

__all__ = ["load_refs_pickle"]

_MAX_DEPTH = 64
_NODES_PER_BYTE = 2
_MIN_NODES = 10_000


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that resolves no class or function at all.

    Lists, dicts, tuples, strings, numbers, booleans and None are built by
    opcodes alone; everything that could run code (REDUCE, BUILD, NEWOBJ, ...)
    needs a callable, and callables come from ``find_class`` (GLOBAL,
    STACK_GLOBAL; the EXT codes resolve through it too and need entries in
    copyreg's extension registry, which is empty unless a program fills it)
    or from ``persistent_load``, which is not defined here. Refusing
    ``find_class`` makes a hostile refs file inert.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _to_str(value: Any) -> Any:
    """Python 2 wrote the real files; strings may arrive as bytes or str."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return value


class _TooLarge(Exception):
    """The data is deeper or larger than its file allows."""


class _PlainCopy:
    """Bytes keys and values turned into str, recursively, within a node budget and a depth limit."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, value: Any, depth: int = 0) -> Any:
        self.budget -= 1
        if self.budget < 0 or depth > _MAX_DEPTH:
            raise _TooLarge
        if isinstance(value, dict):
            return {_to_str(key): self(item, depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(item, depth + 1) for item in value]
        return _to_str(value)


def load_refs_pickle(path: Path) -> list[dict]:
    """Read a REFER refs pickle without letting it run code or expand.

    Python 2 ``str`` values are read as bytes (``encoding="bytes"``) and
    then decoded as UTF-8, falling back to latin-1 byte by byte. That reads
    ASCII exactly as ``encoding="latin1"`` would, and also reads a Python 2
    str holding UTF-8 text correctly, where latin1 would garble it
    ("cafÃ©"). Python 3 bytes values get the same decoding.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"refs file not found: {path}")
    data = read_regular(path, MAX_JSON_BYTES, what="refs file")  # refs(unc).p files are a few MB
    try:
        refs = _PlainDataUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        if "refused" in str(error) or "persistent" in str(error):
            raise InputError(
                f"refs file {path} contains objects other than plain data; refusing to load it"
            ) from None
        raise InputError(f"refs file {path} is not a readable pickle: {error}") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as error:
        reason = f"{type(error).__name__}: {error}"
        raise InputError(f"refs file {path} is not a readable pickle ({reason})") from None
    try:
        refs = _PlainCopy(max(_MIN_NODES, _NODES_PER_BYTE * len(data)))(refs)
    except _TooLarge:
        raise InputError(
            f"refs file {path} expands to more data than its {len(data)} bytes can hold (shared or "
            f"nested more than {_MAX_DEPTH} deep); refusing to load it"
        ) from None
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise InputError(f"refs file {path} does not hold a list of refs (dicts)")
    return refs
