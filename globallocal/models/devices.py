"""Device and precision names, checked without importing torch (the command line does so first)."""

from __future__ import annotations

import re

from ..errors import InputError

PRECISION_NAMES = ("fp32", "fp16", "bf16")
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_device(device: str) -> None:
    """Refuse a device name torch would not take (``gpu``, ``cuda:x``) in one line."""
    if not _DEVICE.fullmatch(device):
        raise InputError(f"unknown device={device!r}; use auto (CUDA when available), cpu, cuda or cuda:N")


def check_precision(precision: str) -> None:
    if precision not in PRECISION_NAMES:
        raise InputError(f"unknown precision '{precision}'; use one of {', '.join(PRECISION_NAMES)}")
