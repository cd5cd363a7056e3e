"""A model folder in the transformers layout, checked before anything is built from it.

What a folder's files say decides what gets allocated: an image size of
10**6 in ``config.json`` builds position tables of 40 GB before anything
fails, a processor size of 10**5 resizes a photo to 30 GB, a ``tokenizer.json``
of 1 GB is read whole. So every loader of such a folder (SAM 3's, the VLMs')
reads it through these helpers first, torch-free:

- :func:`read_config`: a JSON file bounded and checked as data
  (:func:`~globallocal.data.bounded.read_json`: a regular file, finite
  numbers, 64-bit integers), an object at the top;
- :func:`check_bounds`: the fields that size allocations, at any depth of
  the file (sub-configurations too), within each loader's own :class:`Bound`;
- :func:`check_file_size`: a tokenizer's files of a bounded size;
- :func:`safetensors_tensors`: the weights file's tensors (names, shapes,
  dtypes) from its header, without reading them, for
  :func:`~globallocal.models.weights.check_tensors`.

Every refusal is one :class:`~globallocal.errors.WeightsError` line naming
the file, the key and ``fix`` (what to pass instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.bounded import key_path, open_regular, read_json
from ..errors import InputError, WeightsError, first_line
from .weights import TensorInfo

__all__ = [
    "CONFIG_MAX_BYTES",
    "TOKENIZER_MAX_BYTES",
    "Bound",
    "check_bounds",
    "check_file_size",
    "read_config",
    "safetensors_tensors",
]

# A configuration file is a few KB (a tokenizer_config.json with a chat template some tens of KB).
CONFIG_MAX_BYTES = 4 << 20
# A tokenizer's vocabulary: CLIP's tokenizer.json is 3.6 MB, the largest common ones (Gemma's) about 35 MB.
TOKENIZER_MAX_BYTES = 64 << 20


def _numbers(value: Any) -> list[Any] | None:
    """The numbers of a number or of a (nested) list of numbers; None when it holds anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        parts = [_numbers(item) for item in value]
        return None if any(part is None for part in parts) else [number for part in parts for number in part]
    return None


@dataclass(frozen=True)
class Bound:
    """What a configuration field may hold: a number from ``low`` to ``high``, or a list (nested lists too: sizes
    as ``[h, w]``) of such numbers, ``count`` of them when given; whole numbers unless ``whole`` is False. A null is
    always allowed: the library's default then applies."""

    low: float
    high: float
    whole: bool = True
    count: int | None = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return True
        numbers = _numbers(value)
        if not numbers or (self.count is not None and isinstance(value, list) and len(numbers) != self.count):
            return False
        return all(self.low <= number <= self.high and (not self.whole or isinstance(number, int))
                   for number in numbers)

    def describe(self) -> str:
        kind = "whole number" if self.whole else "number"
        many = f" or a list of {self.count} {kind}s" if self.count else ""
        return f"a {kind}{many} from {self.low:g} to {self.high:g}"


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_config(path: str | os.PathLike[str], what: str, fix: str, max_bytes: int = CONFIG_MAX_BYTES
                ) -> dict[str, Any]:
    """A model folder's JSON file (``what``: "SAM 3 config"), bounded and checked as data, an object at the top."""
    try:
        data = read_json(path, what=what, max_bytes=max_bytes)
    except (OSError, InputError) as error:
        raise WeightsError(f"cannot read {path} ({first_line(error)}); {fix}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a {what}: it holds {_shown(data)}, not an object; {fix}")
    return data


def check_bounds(config: Mapping[str, Any], bounds: Mapping[str, Bound], path: str | os.PathLike[str],
                 fix: str) -> None:
    """Refuse a file whose fields named in ``bounds`` (at any depth, within lists of objects too) hold anything
    outside their :class:`Bound`, naming the first one by its key path. A field holding an object (``size`` as
    ``{"height": ..., "width": ...}``) is checked field by field instead."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(config, ())]
    while stack:  # the file was depth-checked when read: no recursion needed, none risked
        node, keys = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, value in items:
            bound = bounds.get(key) if isinstance(node, dict) else None
            if bound is not None and not isinstance(value, dict) and not bound.accepts(value):
                raise WeightsError(f"{path}: {key_path((*keys, key))} must be {bound.describe()}, got "
                                   f"{_shown(value)}; {fix}")
            if isinstance(value, (dict, list)):
                stack.append((value, (*keys, key)))


def check_file_size(path: str | os.PathLike[str], what: str, fix: str, max_bytes: int = TOKENIZER_MAX_BYTES) -> None:
    """Refuse ``path`` unless it is a regular file of at most ``max_bytes`` (a library reads it whole)."""
    try:
        descriptor = open_regular(path, what=what)
    except (OSError, InputError) as error:
        raise WeightsError(f"cannot read {path} ({first_line(error)}); {fix}") from None
    try:
        size = os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)
    if size > max_bytes:
        raise WeightsError(f"{what} {path} is {size / (1 << 20):.0f} MiB, more than the {max_bytes >> 20} MiB "
                           f"a {what} can be; {fix}")


def safetensors_tensors(path: Path, fix: str) -> dict[str, TensorInfo]:
    """Every tensor of a ``.safetensors`` file, by name, as its header describes it (nothing else is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            return {name: TensorInfo(tuple(weights.get_slice(name).get_shape()), weights.get_slice(name).get_dtype())
                    for name in weights.keys()}  # noqa: SIM118 - a safe_open handle is no dict
    except Exception as error:  # safetensors raises its own error type, and OSError
        raise WeightsError(f"cannot read {path}: not a safetensors file ({first_line(error)}); {fix}") from None
