"""Sweeps of a finished, cached evaluation run, without the models: what every method's sweep shares.

A run made with ``--cache`` holds every proposal's features and the raw text
features of every string the method encoded, and each sentence record holds
the intersection of every proposal with the ground truth; so for other
scoring weights a method can pick again and the metrics be summed with no
image decoded and no model run. Each method that can be swept names its
sweep module in its registry entry (:attr:`MethodSpec.sweep_module`);
:func:`run_sweep` opens the run, checks the axes and hands it over as a
:class:`~globallocal.methods.sweeps.SweptRun` (:class:`CachedRun`: the
records read and checked, the metrics summed); the method hands back its
result, Markdown and heat map, and this module writes them.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from ..data.bounded import Shape, check_shape, json_text
from ..data.datasets import dataset_label
from ..data.images import save_png, save_text
from ..errors import InputError
from ..methods import DEFAULT_METHOD, get_method
from ..methods.settings import MethodSettings
from ..methods.sweeps import Sweep
from ..models.architectures import FAMILIES
from .cache_stores import DamagedEntry, FeatureShapes, ImageEntry, TextStore, VisualStore, check_features
from .evaluate import CONFIG_FILE, REPORT_JSON, CompletedImage, read_records, referent
from .metrics import MetricAccumulator
from .report import read_report
from .sweepable import check_sweepable, sweepable_methods

__all__ = [
    "SWEEP_JSON",
    "SWEEP_MD",
    "SWEEP_PNG",
    "CachedRun",
    "SentenceTally",
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


class SentenceTally:
    """The metrics of one answer at one point of a sweep (:class:`~globallocal.methods.sweeps.Tally`): each
    replayed answer scored by its record's counts, as evaluate scored the run's."""

    def __init__(self) -> None:
        self.metrics = MetricAccumulator()

    def add(self, record: dict[str, Any], index: int, area: int) -> None:
        intersection = record["overlaps"][index]
        union = area + record["gt_area"] - intersection
        self.metrics.add(intersection, union, ref_id=referent(record), image_id=record["image_id"])

    def add_unanswered(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.metrics.add(record["I"], record["U"], ref_id=referent(record), image_id=record["image_id"],
                             no_proposals=True)

    def summary(self) -> dict[str, Any]:
        return self.metrics.summary()


_AGAIN = "evaluate again with the same --cache"
# What a sweep reads of an answered sentence's record, beyond what every record holds (SENTENCE_RECORD).
_ANSWERED = {"index": int, "overlaps": [int], "expression": str, "noun_phrase": str, "cache_entry?": str}


def _entry(run: CachedRun, image: Any, name: str | None) -> ImageEntry:
    """The cache entry a record names, refused when it is missing or damaged."""
    try:
        entry = run.visual.read(name) if name is not None else None
    except InputError as error:  # damaged, or a name that is no entry's
        raise InputError(f"the cache entry of image {image}: {error}; {_AGAIN}") from None
    if entry is None:
        raise InputError(f"the cache entry of image {image} ({name}) in {run.visual.directory} is missing or not "
                         f"this run's; {_AGAIN}")
    return entry


def _check_counts(records: list[dict[str, Any]], areas: np.ndarray | None, where: str) -> None:
    """Refuse counts that no evaluation records: an answer outside the proposals, an overlap larger than its
    proposal or the ground truth, an intersection larger than its union."""
    for record in records:
        if areas is None:
            fits = 0 <= record["I"] <= record["U"]
        else:
            overlaps = np.asarray(record["overlaps"], dtype=np.int64)
            fits = (len(overlaps) == len(areas) and 0 <= record["index"] < len(areas) and record["gt_area"] >= 0
                    and (overlaps >= 0).all() and (overlaps <= np.minimum(areas, record["gt_area"])).all())
        if not fits:
            raise InputError(f"{where}: the record of {str(record.get('phrase'))!r:.60} does not fit its image's "
                             f"cache entry (its index, overlaps or counts are out of range); {_AGAIN}")


def entry_groups(
    run: CachedRun, done: CompletedImage, texts: dict[str, torch.Tensor],
    strings: Callable[[list[dict[str, Any]]], list[str]], shapes: Callable[[int, int], FeatureShapes],
) -> Iterator[tuple[ImageEntry | None, list[dict[str, Any]]]]:
    """A recorded image's sentences by the cache entry they were answered from: the image's (its marker's), or
    with phrase-dependent proposals each sentence's own; sentences without proposals come with None.

    Everything the replay reads is checked first: the records' fields, the entry (missing, damaged, or not the
    one the run scored), the text features of ``strings(records)`` (added to ``texts``) and the entry's
    features, of ``shapes(N, D)`` for its N proposals and text features D wide.
    """
    image = done.marker["image_done"]
    where = f"the records of {run.directory}, image {image}"
    check_shape(done.marker, {"cache_entry?": str}, f"{where}, its marker", f"; {_AGAIN}")
    unanswered = [record for record in done.records if record["no_proposals"]]
    if unanswered:
        _check_counts(unanswered, None, where)
        yield None, unanswered
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for number, record in enumerate(done.records, start=1):
        if not record["no_proposals"]:
            check_shape(record, _ANSWERED, f"{where}, sentence {number}", f"; {_AGAIN}")
            groups.setdefault(record.get("cache_entry", done.marker.get("cache_entry")), []).append(record)
    for name, records in groups.items():
        entry = _entry(run, image, name)
        _check_counts(records, entry.areas, where)
        width = load_texts(run.texts, texts, strings(records))
        try:
            check_features(entry.tensors, shapes(len(entry.areas), width))
        except ValueError as error:
            raise InputError(f"the cache entry of image {image} ({name}) in {run.visual.directory} does not fit the "
                             f"run's text features: {error}; {_AGAIN}") from None
        yield entry, records


def load_texts(texts: TextStore, known: dict[str, torch.Tensor], strings: list[str]) -> int:
    """Add the cached text features of ``strings`` to ``known`` (strings recur across images); their width,
    which every one must have."""
    wanted = [s for s in dict.fromkeys(strings) if s not in known]
    width = len(next(iter(known.values()))) if known else None
    found: dict[str, torch.Tensor] = {}
    try:
        for text in wanted:
            found.update(texts.read([text], width))
            if width is None and text in found:
                width = len(found[text])
    except DamagedEntry as error:
        raise InputError(f"{error}; {_AGAIN}") from None
    known.update(found)
    absent = [s for s in wanted if s not in known]
    if absent:
        raise InputError(f"the text features of {absent[0]!r} are not in the cache {texts.directory}")
    return len(next(iter(known.values())))


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
    text_features: dict[str, torch.Tensor] = field(default_factory=dict)
    """The cached text features read so far, by string (short phrases and noun phrases recur across images)."""

    @property
    def scoring(self) -> dict[str, Any]:
        """The method and every setting the run scored with."""
        return self.config["cache"]["scoring"]

    @property
    def dataset(self) -> str:
        return dataset_label(self.config)

    def settings(self, kind: type[MethodSettings], extra: Shape = None) -> Any:
        """The method's settings as the run recorded them, each checked, and the other scoring values of the
        shape ``extra``: a text alpha, a missing feature_norm are one line naming the key."""
        where, at = str(self.directory / CONFIG_FILE), ("cache", "scoring")
        if extra is not None:
            check_shape(self.scoring, extra, where, "; evaluate the run again", at=at)
        return kind.from_record(self.scoring, where, "; evaluate the run again", at=at)

    def sentences(
        self, strings: Callable[[list[dict[str, Any]]], list[str]], shapes: Callable[[int, int], FeatureShapes],
    ) -> Iterator[tuple[ImageEntry | None, list[dict[str, Any]]]]:
        """Every recorded image's sentences by the cache entry they were answered from, checked
        (:func:`entry_groups`), with the text features of ``strings(records)`` in :attr:`text_features`."""
        for done in read_records(self.directory):
            yield from entry_groups(self, done, self.text_features, strings, shapes)

    def tally(self) -> SentenceTally:
        return SentenceTally()


def open_cached_run(run_dir: str | Path, cache_dir: str | Path | None = None) -> CachedRun:
    """A finished cached run, refused with the fix when it is unfinished, uncached or its cache is gone."""
    run_dir = Path(run_dir)
    config = check_sweepable(run_dir)
    report = read_report(run_dir / REPORT_JSON)
    cache_info = config["cache"]
    check_shape(config, {"cache": _CACHE_SHAPE}, str(run_dir / CONFIG_FILE), "; evaluate the run again")
    if cache_info["family"] not in FAMILIES:
        raise InputError(f"{run_dir / CONFIG_FILE}: cache.family is {cache_info['family']!r}, not a CLIP image "
                         f"tower the tool has ({', '.join(FAMILIES)}); evaluate the run again")
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
    with one_thread():
        swept = module.sweep(run, {name: given.get(name) for name in axes_of}, started)
    return _write(swept, Path(out_dir) if out_dir is not None else run.directory / "sweep")


def _write(swept: Sweep, out_dir: Path) -> dict[str, Any]:
    """sweep.json, sweep.md and the heat map sweep.png where the method drew one; the result, with the files."""
    result = swept.result
    save_text(json_text(result, indent=2) + "\n", out_dir / SWEEP_JSON)
    save_text(swept.markdown, out_dir / SWEEP_MD)
    names = [SWEEP_JSON, SWEEP_MD]
    if swept.heat_map is not None:
        save_png(np.asarray(swept.heat_map), out_dir / SWEEP_PNG)
        names.append(SWEEP_PNG)
    result["files"] = {name: str(out_dir / name) for name in names}
    return result


def format_sweep_table(result: dict[str, Any]) -> Table:
    """The sweep's table as its method draws it (every point with all metrics, the best in bold, the run's
    own setting marked)."""
    return importlib.import_module(get_method(result.get("method", DEFAULT_METHOD)).sweep_module).format_table(result)
