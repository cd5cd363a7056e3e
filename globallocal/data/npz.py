"""Bounded reading of ``.npz`` archives (the feature cache's entries): regular files only, every array's size
checked against the bytes the archive holds before anything is allocated.

``np.load`` opens the path as it is (a FIFO blocks the reader forever) and
allocates what an array's header claims: a 200-byte file whose header says
3.6 TiB is allocated before a byte of data is read. Here the file must be a
regular one (:func:`~globallocal.data.bounded.open_regular`), each member
stored uncompressed as ``np.savez`` writes it, and each ``.npy`` header must
describe exactly the bytes that follow it, so nothing larger than the file is
ever allocated. The zip format's CRC-32 of each member is checked as it is
read, so a flipped bit in the data is noticed too.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from .bounded import open_regular

__all__ = ["NpzError", "read_npz"]


class NpzError(ValueError):
    """An .npz file that is damaged, foreign or outside the bounds; the message says how."""


def _array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> np.ndarray:
    """One member as an array, its header checked against the member's bytes before allocating."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        raise NpzError(f"its member {name} is compressed (np.savez stores members as they are)")
    if info.file_size > size:
        raise NpzError(f"its member {name} claims {info.file_size} bytes in a file of {size}")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise NpzError(f"its member {name} is .npy format {version}, not 1.0 or 2.0")
        except ValueError as error:  # a header that is not one
            raise NpzError(f"its member {name} has no readable .npy header ({error})") from None
        if dtype.hasobject:
            raise NpzError(f"its member {name} holds Python objects")
        count = math.prod(shape)
        expected = count * dtype.itemsize
        held = info.file_size - member.tell()
        if expected != held:
            raise NpzError(f"the header of {name} says {shape} {dtype} ({expected} bytes) but {held} bytes follow")
        array = np.empty(count, dtype=dtype)
        if member.readinto(memoryview(array).cast("B")) != expected or member.read(1):
            raise NpzError(f"its member {name} ends early")
    return array.reshape(shape, order="F" if fortran else "C")


def read_npz(path: str | os.PathLike[str], what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an .npz written by ``np.savez``, by name; :class:`NpzError` for a damaged or foreign file,
    :class:`~globallocal.errors.InputError` for one that is not a regular file, FileNotFoundError when absent."""
    fd = open_regular(path, what=what)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        try:
            with zipfile.ZipFile(handle) as archive:
                arrays = {}
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        raise NpzError(f"its member {info.filename} is not an array")
                    arrays[Path(info.filename).stem] = _array(archive, info, size)
                return arrays
        except (zipfile.BadZipFile, EOFError, OSError) as error:  # a CRC mismatch, a truncated file
            raise NpzError(f"it is not a readable .npz file ({error})") from None
