"""What every bench shares: its options, the device's peak matrix rate, a row's memory check, the load average.

A ratio says how much faster than the authors' structure; the fraction of the
device's peak says how far from the physical limit the dominant stage is, so
every bench prints both. The peak is one large matrix product per precision,
timed here, on the device the bench runs on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GB = 1024**3


def add_options(parser: argparse.ArgumentParser) -> None:
    """--device, --precisions and --quick, the same in every bench."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated, fp32 first (default: fp32,bf16 on the CPU, fp32,fp16,bf16 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="the smallest workload: checks that the bench runs")


def precisions(args: argparse.Namespace) -> list[str]:
    """The precisions to measure side by side, fp32 (the reference's) first."""
    if args.precisions:
        chosen = args.precisions.split(",")
    else:
        chosen = ["fp32", "fp16", "bf16"] if args.device.startswith("cuda") else ["fp32", "bf16"]
    unknown = [name for name in chosen if name not in DTYPES]
    if unknown or chosen[0] != "fp32":
        raise SystemExit(f"--precisions {args.precisions}: give fp32 first, then any of fp16, bf16")
    return chosen


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def seconds(function: Callable[[], object], device: str, repeats: int = 1) -> float:
    """The best wall time of ``repeats`` calls (the least disturbed by other jobs on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_flops(device: str, precision: str, quick: bool = False) -> float:
    """FLOP/s of large square matrix products in ``precision``, the best size's: the device's usable peak.

    Several sizes, because one size alone can sit below the peak (its tiles fit the caches badly), and a
    stage's share of an underestimated peak reads over 100%.
    """
    sizes = (1024,) if quick else ((8192,) if device.startswith("cuda") else (2048, 3072, 4096))
    dtype = DTYPES[precision]
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b  # warm-up: kernel selection, first-touch of the output
        repeats = 20 if device.startswith("cuda") else 3
        best = max(best, 2 * size**3 / seconds(lambda a=a, b=b: a @ b, device, repeats))
    return best


def flops_of(function: Callable[[], object]) -> int:
    """Matrix FLOPs (products, convolutions, attention) one call of ``function`` does, as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def available_bytes(device: str) -> int:
    """Memory a new row can use now: free device memory on CUDA, the kernel's MemAvailable on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass(frozen=True)
class LinearNeed:
    """A row's peak memory as fixed + per_item * items, fitted to two small probe runs."""

    fixed: float
    per_item: float

    @classmethod
    def fitted(cls, probe: Callable[[int], float], small: int, large: int) -> LinearNeed:
        low, high = probe(small), probe(large)
        per_item = max(high - low, 0.0) / (large - small)
        return cls(low - per_item * small, per_item)

    def bytes(self, items: int) -> float:
        return self.fixed + self.per_item * items

    def largest(self, wanted: int, budget: float) -> int:
        """``wanted`` if it fits ``budget``, else the largest item count that does (0: not even one)."""
        if self.bytes(wanted) <= budget:
            return wanted
        if self.per_item <= 0:
            return 0
        return max(0, min(wanted, int((budget - self.fixed) / self.per_item)))


def fitting(need: LinearNeed, wanted: int, device: str, margin: float = 0.85) -> tuple[int, str]:
    """The item count to run (``wanted`` or the largest that fits free memory) and a note for the table."""
    budget = margin * available_bytes(device)
    count = need.largest(wanted, budget)
    if count == wanted:
        return count, ""
    return count, (f"{wanted} needs ~{need.bytes(wanted) / GB:.1f} GB, {budget / GB:.1f} GB free: "
                   f"ran {count}" if count else f"does not fit: needs ~{need.bytes(wanted) / GB:.1f} GB")


def child(script: str, *arguments: str) -> dict:
    """Run ``script --child ARGUMENTS`` in its own process (its own peak memory) and read its JSON last line.

    A child killed for memory or failing is reported as {"error": ...}, so one row cannot end the bench.
    """
    command = [sys.executable, script, *arguments]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"error": f"exit status {done.returncode}: {last[:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_bytes(device: str) -> float:
    """This process's peak memory so far: the allocator's on CUDA, resident memory on the CPU."""
    if device.startswith("cuda"):
        return float(torch.cuda.max_memory_allocated(device))
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def markdown(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def preamble(device: str, chosen: list[str], quick: bool) -> dict[str, float]:
    """Print the device, its measured peak per precision and the load; return the peaks (FLOP/s)."""
    peaks = {precision: peak_flops(device, precision, quick) for precision in chosen}
    rates = ", ".join(f"{precision} {peak / 1e9:.0f} GFLOP/s" for precision, peak in peaks.items())
    print(f"device: {device_name(device)}; matmul peak: {rates}; {load_average()}", flush=True)
    return peaks


def share(flops: float, elapsed: float, peak: float) -> str:
    """The fraction of ``peak`` a stage doing ``flops`` in ``elapsed`` seconds reaches, as a percentage."""
    return f"{100 * flops / elapsed / peak:.0f}%"
