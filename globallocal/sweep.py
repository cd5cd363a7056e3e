"""Alpha x beta sweeps of a finished, cached evaluation run, without the models.

A run made with a feature cache holds everything the choice of proposal
depends on: the cache has every proposal's unblended global and local
features and the raw text features of every expression and noun phrase, and
each sentence record has its expression, noun phrase, ground-truth area and
the intersection of every proposal with the ground truth. For another alpha
or beta, the scores are computed again, the best proposal picked, and its
I = overlap and U = area + |gt| - I summed: the metrics of that setting, with
no image decoded and no model run.

The scoring calls the Global-Local method's own rules
(:mod:`globallocal.methods.global_local`) one sentence at a time, as the run
scored them, so at the run's own alpha and beta it picks the run's proposals
bit for bit; the sweep checks that and warns when it does not (features
replayed on another device or library version than the run's).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from .cache import ImageEntry, TextStore, VisualStore
from .datasets import dataset_label
from .errors import InputError
from .evaluate import CONFIG_FILE, REPORT_JSON, CompletedImage, read_records, referent
from .images import save_png, save_text
from .methods.global_local import proposal_scores, scoring_visual, text_blend, visual_blend
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator
from .sweep_heatmap import draw_heatmap, grid_value, is_run_point

__all__ = [
    "SWEEP_JSON",
    "SWEEP_MD",
    "SWEEP_PNG",
    "CachedRun",
    "draw_heatmap",
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
def _one_thread() -> Iterator[None]:
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


class _Replay:
    """The run's choices made again at every (alpha, beta) point, image by image, with the metrics summed."""

    def __init__(
        self,
        visual: VisualStore,
        texts: TextStore,
        points: list[tuple[float, float]],
        run_point: tuple[float, float],
        feature_norm: str,
        family: str,
    ) -> None:
        self.visual, self.texts = visual, texts
        self.run_point, self.feature_norm, self.family = run_point, feature_norm, family
        self.totals = {point: MetricAccumulator() for point in points}
        self.checked = self.differing = 0  # sentences replayed at the run's point, and picks unlike the run's
        self._text_features: dict[str, torch.Tensor] = {}  # short phrases and noun phrases recur across images

    def add_image(self, done: CompletedImage) -> None:
        records = done.records
        if records[0]["no_proposals"]:
            # No choice to replay: the empty prediction the run scored, at every setting.
            for total in self.totals.values():
                add_unanswered(total, records)
            return
        entry = load_entry(self.visual, done)
        strings = [s for r in records for s in (r["expression"], r["noun_phrase"])]
        load_texts(self.texts, self._text_features, strings)
        for point, total in self.totals.items():
            picks = self._picks(records, entry, *point)
            for record, index in zip(records, picks):
                intersection = record["overlaps"][index]
                union = int(entry.areas[index]) + record["gt_area"] - intersection
                total.add(intersection, union, ref_id=referent(record), image_id=record["image_id"])
            if point == self.run_point:
                self.checked += len(records)
                self.differing += sum(index != record["index"] for record, index in zip(records, picks))

    def _picks(self, records: list[dict[str, Any]], entry: ImageEntry, alpha: float, beta: float) -> list[int]:
        """The proposal each sentence of one image picks at (alpha, beta)."""
        norm, family = self.feature_norm, self.family
        visual = scoring_visual(visual_blend(entry.tensors["global"], entry.tensors["local"], alpha, norm, family),
                                norm, family)
        picks = []
        for record in records:
            # One sentence at a time, stacked as Segmenter.text_features stacks a single phrase: the same bits.
            expression = torch.stack([self._text_features[record["expression"]]])
            noun_phrase = torch.stack([self._text_features[record["noun_phrase"]]])
            text = text_blend(expression, noun_phrase, beta, norm, family)
            picks.append(int(torch.argmax(proposal_scores(text, visual, norm, family)[0])))
        return picks


def add_unanswered(total: MetricAccumulator, records: list[dict[str, Any]]) -> None:
    """The sentences of an image without proposals: the empty prediction the run scored (IoU 0)."""
    for record in records:
        total.add(record["I"], record["U"], ref_id=referent(record), image_id=record["image_id"], no_proposals=True)


def load_entry(visual: VisualStore, done: CompletedImage) -> ImageEntry:
    """The cache entry of a recorded image, refused when it is missing or not the one the run scored."""
    name = done.marker.get("cache_entry")
    entry = visual.load(name) if name else None
    if entry is None or any(len(record["overlaps"]) != len(entry.areas) for record in done.records):
        raise InputError(
            f"the cache entry of image {done.marker['image_done']} ({name}) in {visual.directory} is "
            "missing, damaged or not this run's; evaluate again with the same --cache"
        )
    return entry


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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"no {what}: {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {error}") from None


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
    config = _read_json(run_dir / CONFIG_FILE, f"evaluation run in {run_dir}")
    report = _read_json(run_dir / REPORT_JSON, f"finished run in {run_dir} (run the evaluation to the end first)")
    cache_info = config.get("cache")
    if not cache_info:
        raise InputError(f"{run_dir} was evaluated without --cache; run it again with --cache DIR to sweep it")
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
    sweep.md and (global-local) the heat map sweep.png.

    A global-local run sweeps ``alphas`` x ``betas``; a HybridGL run sweeps
    ``betas`` and ``axes`` (values of the other
    :data:`~globallocal.methods.hybridgl_sweep.SWEPT_SETTINGS`, see
    :func:`globallocal.sweep_hybridgl.sweep_hybridgl`). Omitted axes stay at
    the run's own value. ``out_dir`` defaults to ``run_dir/sweep``;
    ``cache_dir`` to the cache folder the run recorded (give it when the
    cache has moved).
    """
    started = time.perf_counter()
    run = open_cached_run(run_dir, cache_dir)
    method = run.scoring.get("method")
    other_axes = sorted(name for name, values in (axes or {}).items() if values is not None)
    if "tcl_weight" in run.scoring:
        raise InputError(f"{run.directory} blends {method} with TCL (--tcl-weight); its scores cannot be "
                         "replayed from the cache, so it cannot be swept")
    if method == "hybridgl":
        from .sweep_hybridgl import sweep_hybridgl

        if alphas is not None:
            raise InputError(f"--alpha is a global-local weight; {run.directory} is a hybridgl run (sweep --beta, "
                             "--relation-weight, --gem-k-big, --gem-k-small, --gem-k-other)")
        return sweep_hybridgl(run, {"beta": betas, **(axes or {})}, out_dir, started)
    if method != "global-local":
        raise InputError(f"{run.directory} was evaluated with method {method}; sweeps are for global-local and "
                         "hybridgl runs")
    if other_axes:
        raise InputError(f"--{other_axes[0].replace('_', '-')} is a HybridGL weight; {run.directory} is a "
                         "global-local run (sweep --alpha and --beta)")
    run_dir, scoring, family = run.directory, run.scoring, run.config["cache"]["family"]
    feature_norm = scoring["feature_norm"]
    run_point = (scoring["alpha"], scoring["beta"])
    alphas = alphas or [run_point[0]]
    betas = betas or [run_point[1]]
    visual, texts = run.visual, run.texts

    grid = [(alpha, beta) for alpha in alphas for beta in betas]
    points = grid if run_point in grid else [*grid, run_point]
    replay = _Replay(visual, texts, points, run_point, feature_norm, family)
    with _one_thread():
        for done in read_records(run_dir):
            replay.add_image(done)
    if replay.differing:
        warnings.warn(
            f"at the run's own alpha {run_point[0]} and beta {run_point[1]}, {replay.differing} of {replay.checked} "
            "sentences pick another proposal than the run did (were the features made on another device or library "
            "version?); the sweep's numbers are approximate",
            stacklevel=2,
        )

    results = [{"alpha": a, "beta": b, "metrics": replay.totals[(a, b)].summary()} for a, b in grid]
    best = {}
    for metric in ("oIoU", "mIoU"):
        top = max(results, key=lambda item, metric=metric: item["metrics"][metric])
        best[metric] = {"alpha": top["alpha"], "beta": top["beta"], "value": top["metrics"][metric]}
    result = {
        "run_dir": str(run_dir),
        "dataset": run.dataset,
        "alphas": list(alphas),
        "betas": list(betas),
        "results": results,
        "best": best,
        "run": {
            "alpha": run_point[0],
            "beta": run_point[1],
            "metrics": replay.totals[run_point].summary(),
            "sentences_checked": replay.checked,
            "sentences_differing": replay.differing,
        },
        "seconds": time.perf_counter() - started,
    }
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "sweep"
    save_text(json.dumps(result, indent=2) + "\n", out_dir / SWEEP_JSON)
    save_text(_markdown(result), out_dir / SWEEP_MD)
    save_png(np.asarray(draw_heatmap(result)), out_dir / SWEEP_PNG)
    result["files"] = {name: str(out_dir / name) for name in (SWEEP_JSON, SWEEP_MD, SWEEP_PNG)}
    return result


# -- output ------------------------------------------------------------------


def _markdown(result: dict[str, Any]) -> str:
    run = result["run"]
    lines = [
        f"# alpha x beta sweep: {result['dataset']}",
        "",
        f"Run `{result['run_dir']}`, evaluated at alpha {run['alpha']:g}, beta {run['beta']:g} (marked *): "
        f"oIoU {run['metrics']['oIoU']:.2f}, mIoU {run['metrics']['mIoU']:.2f}; the sweep reproduces "
        f"{run['sentences_checked'] - run['sentences_differing']} of its {run['sentences_checked']} picks. "
        "Best values in bold.",
    ]
    for metric in ("oIoU", "mIoU"):
        best = result["best"][metric]
        lines += ["", f"## {metric}", "", "| alpha \\ beta | " + " | ".join(f"{b:g}" for b in result["betas"]) + " |"]
        lines.append("| --- |" + " ---: |" * len(result["betas"]))
        for alpha in result["alphas"]:
            cells = []
            for beta in result["betas"]:
                text = f"{grid_value(result, alpha, beta, metric):.2f}"
                if (alpha, beta) == (best["alpha"], best["beta"]):
                    text = f"**{text}**"
                cells.append(text + ("*" if is_run_point(result, alpha, beta) else ""))
            lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    thresholds = [f"{t:.1f}" for t in PRECISION_THRESHOLDS]
    header = ["alpha", "beta", "oIoU", "mIoU", *(f"P@{t}" for t in thresholds)]
    lines += ["", "## All metrics", "", "| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for item in result["results"]:
        metrics = item["metrics"]
        values = [metrics["oIoU"], metrics["mIoU"], *(metrics["precision"][t] for t in thresholds)]
        lines.append(f"| {item['alpha']:g} | {item['beta']:g} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines += ["", f"Computed in {result['seconds']:.1f} s from the run's records and feature cache."]
    return "\n".join(lines) + "\n"


def format_sweep_table(result: dict[str, Any]) -> Table:
    """Every (alpha, beta) with all metrics; the best oIoU and mIoU in bold, the run's own setting marked.
    For a HybridGL sweep, :func:`~globallocal.sweep_hybridgl.format_hybridgl_table`."""
    if result.get("method") == "hybridgl":
        from .sweep_hybridgl import format_hybridgl_table

        return format_hybridgl_table(result)
    thresholds = [f"{t:.1f}" for t in PRECISION_THRESHOLDS]
    table = Table(title=f"alpha x beta sweep: {result['dataset']}")
    for name in ("alpha", "beta", "oIoU", "mIoU", *(f"P@{t}" for t in thresholds)):
        table.add_column(name, justify="right")
    table.add_column("", no_wrap=True)
    best = result["best"]
    for item in result["results"]:
        alpha, beta, metrics = item["alpha"], item["beta"], item["metrics"]

        def cell(metric: str, alpha: float = alpha, beta: float = beta, metrics: dict = metrics) -> str:
            text = f"{metrics[metric]:.2f}"
            return f"[bold]{text}[/]" if (best[metric]["alpha"], best[metric]["beta"]) == (alpha, beta) else text

        note = "< run" if is_run_point(result, alpha, beta) else ""
        table.add_row(f"{alpha:g}", f"{beta:g}", cell("oIoU"), cell("mIoU"),
                      *(f"{metrics['precision'][t]:.2f}" for t in thresholds), note)
    return table
