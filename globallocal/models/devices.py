"""Device and precision names, checked without importing torch (the command line does so first)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import InputError

PRECISION_NAMES = ("fp32", "fp16", "bf16")
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")
FP16_ON_CPU = ("precision fp16 has no fast kernels on this CPU (no AMX-FP16); use bf16 or fp32 on the CPU, fp16 on "
               "CUDA")
"""The refusal of fp16 on a CPU without float16 matrix units (models.clip.precision_dtype's rule, said here too)."""
# Device files of the GPUs torch drives as CUDA (NVIDIA's, and AMD's through ROCm) on Linux.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def check_device(device: str) -> None:
    """Refuse a device name torch would not take (``gpu``, ``cuda:x``) in one line."""
    if not _DEVICE.fullmatch(device):
        raise InputError(f"unknown device={device!r}; use auto (CUDA when available), cpu, cuda or cuda:N")


def check_precision(precision: str) -> None:
    if precision not in PRECISION_NAMES:
        raise InputError(f"unknown precision '{precision}'; use one of {', '.join(PRECISION_NAMES)}")


def cpu_fp16_units() -> bool | None:
    """Whether this CPU has float16 matrix instructions (AMX-FP16) by the kernel's CPU flags, without torch;
    None where the flags cannot be read (not Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    flags = next((line for line in info.splitlines() if line.startswith("flags")), None)
    return None if flags is None else "amx_fp16" in flags.split()


def _surely_cpu(device: str) -> bool:
    """Whether ``device`` is the CPU for certain: ``cpu``, or ``auto`` on a Linux machine with no GPU device."""
    if device == "cpu":
        return True
    return device == "auto" and sys.platform == "linux" and not any(map(Path.exists, map(Path, _GPU_DEVICE_FILES)))


def check_device_precision(device: str, precision: str) -> None:
    """The device and precision names, and fp16 on a device that is surely a CPU without float16 units: refused at
    once, before torch is imported (torch itself decides where this cannot say)."""
    check_device(device)
    check_precision(precision)
    if precision == "fp16" and _surely_cpu(device) and cpu_fp16_units() is False:
        raise InputError(FP16_ON_CPU)
