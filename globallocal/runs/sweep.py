"""Sweeps of a finished, cached evaluation run, without the models: what every method's sweep shares.

A run made with ``--cache`` holds every proposal's features and the raw text
features of every string the method encoded, and each sentence record holds
the intersection of every proposal with the ground truth; so for other
scoring weights a method can pick again and the metrics be summed with no
image decoded and no model run. Each method that can be swept names its
sweep module in its registry entry (:attr:`MethodSpec.sweep_module`);
:func:`run_sweep` opens the run, checks the axes and hands it over.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from ..data.bounded import check_shape, read_json
from ..data.datasets import dataset_label
from ..errors import InputError
from ..methods import DEFAULT_METHOD, get_method
from .cache import ImageEntry, TextStore, VisualStore
from .evaluate import CONFIG_FILE, REPORT_JSON, CompletedImage, referent
from .metrics import MetricAccumulator
from .report import check_report
from .sweepable import check_sweepable, sweepable_methods

__all__ = [
    "SWEEP_JSON",
    "SWEEP_MD",
    "SWEEP_PNG",
    "CachedRun",
    "format_sweep_table",
    "open_cached_run",
    "parse_values",
    "run_sweep",
]

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"


# -- the sweep ---------------------------------------------------------------


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread for the block.

    The replay is many thousands of tiny operations; with several threads
    each pays a fork-join, and on a busy machine a scheduler slice (measured:
    8 ms instead of 0.06 ms per visual blend on two loaded cores). These
    operations (elementwise, per-row norms) give the same bits on any number
    of threads, and the check against the run's picks would tell otherwise.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def add_unanswered(total: MetricAccumulator, records: list[dict[str, Any]]) -> None:
    """The sentences of an image without proposals: the empty prediction the run scored (IoU 0)."""
    for record in records:
        total.add(record["I"], record["U"], ref_id=referent(record), image_id=record["image_id"], no_proposals=True)


def entry_groups(visual: VisualStore, done: CompletedImage) -> Iterator[tuple[ImageEntry | None, list[dict[str, Any]]]]:
    """A recorded image's sentences by the cache entry they were answered from: the image's (its marker's), or
    with phrase-dependent proposals each sentence's own; sentences without proposals come with None.

    An entry is refused when it is missing or not the one the run scored (its proposal count differs).
    """
    unanswered = [record for record in done.records if record["no_proposals"]]
    if unanswered:
        yield None, unanswered
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for record in done.records:
        if not record["no_proposals"]:
            groups.setdefault(record.get("cache_entry", done.marker.get("cache_entry")), []).append(record)
    for name, records in groups.items():
        entry = visual.load(name) if name else None
        if entry is None or any(len(record["overlaps"]) != len(entry.areas) for record in records):
            raise InputError(
                f"the cache entry of image {done.marker['image_done']} ({name}) in {visual.directory} is "
                "missing, damaged or not this run's; evaluate again with the same --cache"
            )
        yield entry, records


def load_texts(texts: TextStore, known: dict[str, torch.Tensor], strings: list[str]) -> None:
    """Add the cached text features of ``strings`` to ``known`` (strings recur across images)."""
    wanted = [s for s in dict.fromkeys(strings) if s not in known]
    known.update(texts.load(wanted))
    absent = [s for s in wanted if s not in known]
    if absent:
        raise InputError(f"the text features of {absent[0]!r} are not in the cache {texts.directory}")


def parse_values(text: str | None, name: str, low: float = 0.0, high: float = 1.0) -> list[float] | None:
    """Comma-separated values in [low, high], sorted, duplicates dropped; None for None."""
    if text is None:
        return None
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--{name} takes comma-separated numbers such as 0.8,0.9, got {text!r}") from None
    if not values:
        raise InputError(f"--{name} needs at least one value")
    if not all(low <= value <= high for value in values):
        raise InputError(f"--{name} values must be in [{low:g}, {high:g}], got {text!r}")
    return values


# What a sweep reads of a cached run's config.json (evaluate writes it; FeatureCache.describe names the stores).
_CACHE_SHAPE = {"dir": str, "visual": str, "text": str, "scoring": dict, "family": str}


@dataclass
class CachedRun:
    """A finished evaluation run made with --cache: its configuration, report and feature cache."""

    directory: Path
    config: dict[str, Any]
    report: dict[str, Any]
    visual: VisualStore
    texts: TextStore

    @property
    def scoring(self) -> dict[str, Any]:
        """The method and every setting the run scored with."""
        return self.config["cache"]["scoring"]

    @property
    def dataset(self) -> str:
        return dataset_label(self.config)


def open_cached_run(run_dir: str | Path, cache_dir: str | Path | None = None) -> CachedRun:
    """A finished cached run, refused with the fix when it is unfinished, uncached or its cache is gone."""
    run_dir = Path(run_dir)
    config = check_sweepable(run_dir)
    report = read_json(run_dir / REPORT_JSON, what="report")
    check_report(report, run_dir / REPORT_JSON)
    cache_info = config["cache"]
    check_shape(config, {"cache": _CACHE_SHAPE}, str(run_dir / CONFIG_FILE), "; evaluate the run again")
    root = Path(cache_dir) if cache_dir is not None else Path(cache_info["dir"])
    visual = VisualStore(root / cache_info["visual"])
    if not visual.directory.is_dir():
        raise InputError(f"the run's cache {visual.directory} is not there; pass the cache folder with --cache")
    return CachedRun(run_dir, config, report, visual, TextStore(root / cache_info["text"]))


def run_sweep(
    run_dir: str | Path,
    alphas: list[float] | None = None,
    betas: list[float] | None = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    axes: dict[str, list[float] | None] | None = None,
) -> dict[str, Any]:
    """The metrics of a finished cached run at every point of a grid of scoring weights; writes sweep.json,
    sweep.md and, where the method draws one, a heat map.

    The run's method replays its own answers (its registry entry names its
    sweep module and the settings it can vary: global-local ``alpha`` x
    ``beta``, HybridGL ``beta``, its relation weight and GEM k values). ``alphas`` and ``betas`` are
    the ``alpha`` and ``beta`` axes; ``axes`` the others. Omitted axes stay at
    the run's own value. ``out_dir`` defaults to ``run_dir/sweep``;
    ``cache_dir`` to the cache folder the run recorded (give it when the
    cache has moved).
    """
    started = time.perf_counter()
    run = open_cached_run(run_dir, cache_dir)
    method = run.scoring.get("method")
    specs = sweepable_methods()
    if method not in specs or "tcl_weight" in run.scoring:  # its settings said otherwise (check_sweepable)
        raise InputError(f"{run.directory / CONFIG_FILE}: the cache's scoring is not what the run's settings say "
                         f"(method {method}); evaluate the run again")
    axes_of = specs[method].sweep_settings
    given = {"alpha": alphas, "beta": betas, **(axes or {})}
    for name in sorted(axis for axis, values in given.items() if values is not None):
        if name not in axes_of:
            owner = next((spec.display for spec in specs.values() if name in spec.sweep_settings), None)
            what = f"a {owner} weight" if owner else "not a setting any sweep varies"
            raise InputError(f"--{name.replace('_', '-')} is {what}; {run.directory} is a {method} run (sweep "
                             f"{', '.join('--' + axis.replace('_', '-') for axis in axes_of)})")
    module = importlib.import_module(specs[method].sweep_module)
    return module.sweep(run, {name: given.get(name) for name in axes_of}, out_dir, started)


def format_sweep_table(result: dict[str, Any]) -> Table:
    """The sweep's table as its method draws it (every point with all metrics, the best in bold, the run's
    own setting marked)."""
    return importlib.import_module(get_method(result.get("method", DEFAULT_METHOD)).sweep_module).format_table(result)
