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
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table

from .cache import ImageEntry, TextStore, VisualStore
from .datasets import dataset_label
from .errors import InputError
from .evaluate import CONFIG_FILE, REPORT_JSON, CompletedImage, read_records, referent
from .images import save_png, save_text
from .methods.global_local import proposal_scores, scoring_visual, text_blend, visual_blend
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator

__all__ = [
    "SWEEP_JSON",
    "SWEEP_MD",
    "SWEEP_PNG",
    "draw_heatmap",
    "format_sweep_table",
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
                for record in records:
                    total.add(record["I"], record["U"], ref_id=referent(record), image_id=record["image_id"],
                              no_proposals=True)
            return
        name = done.marker.get("cache_entry")
        entry = self.visual.load(name) if name else None
        if entry is None or any(len(record["overlaps"]) != len(entry.areas) for record in records):
            raise InputError(
                f"the cache entry of image {done.marker['image_done']} ({name}) in {self.visual.directory} is "
                "missing, damaged or not this run's; evaluate again with the same --cache"
            )
        strings = list(dict.fromkeys(s for r in records for s in (r["expression"], r["noun_phrase"])))
        self._text_features.update(self.texts.load([s for s in strings if s not in self._text_features]))
        absent = [s for s in strings if s not in self._text_features]
        if absent:
            raise InputError(f"the text features of {absent[0]!r} are not in the cache {self.texts.directory}")
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


def parse_values(text: str | None, name: str) -> list[float] | None:
    """Comma-separated values in [0, 1], sorted, duplicates dropped; None for None."""
    if text is None:
        return None
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--{name} takes comma-separated numbers such as 0.8,0.9, got {text!r}") from None
    if not values:
        raise InputError(f"--{name} needs at least one value")
    if not all(0.0 <= value <= 1.0 for value in values):
        raise InputError(f"--{name} values must be in [0, 1], got {text!r}")
    return values


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"no {what}: {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {error}") from None


def run_sweep(
    run_dir: str | Path,
    alphas: list[float] | None = None,
    betas: list[float] | None = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The metrics of a finished cached run for every (alpha, beta); writes sweep.json, sweep.md and sweep.png.

    ``alphas`` / ``betas`` default to the run's own value. ``out_dir``
    defaults to ``run_dir/sweep``; ``cache_dir`` to the cache folder the run
    recorded (give it when the cache has moved).
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    config = _read_json(run_dir / CONFIG_FILE, f"evaluation run in {run_dir}")
    _read_json(run_dir / REPORT_JSON, f"finished run in {run_dir} (run the evaluation to the end first)")
    cache_info = config.get("cache")
    if not cache_info:
        raise InputError(f"{run_dir} was evaluated without --cache; run it again with --cache DIR to sweep it")
    scoring, family = cache_info["scoring"], cache_info["family"]
    if scoring.get("method") != "global-local":
        raise InputError(f"{run_dir} was evaluated with method {scoring.get('method')}; this sweep is for global-local")
    feature_norm = scoring["feature_norm"]
    run_point = (scoring["alpha"], scoring["beta"])
    alphas = alphas or [run_point[0]]
    betas = betas or [run_point[1]]
    root = Path(cache_dir) if cache_dir is not None else Path(cache_info["dir"])
    visual = VisualStore(root / cache_info["visual"])
    texts = TextStore(root / cache_info["text"])
    if not visual.directory.is_dir():
        raise InputError(f"the run's cache {visual.directory} is not there; pass the cache folder with --cache")

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
        "dataset": dataset_label(config),
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


def _value(result: dict[str, Any], alpha: float, beta: float, metric: str) -> float:
    item = next(r for r in result["results"] if r["alpha"] == alpha and r["beta"] == beta)
    return item["metrics"][metric]


def _is_run(result: dict[str, Any], alpha: float, beta: float) -> bool:
    return (alpha, beta) == (result["run"]["alpha"], result["run"]["beta"])


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
                text = f"{_value(result, alpha, beta, metric):.2f}"
                if (alpha, beta) == (best["alpha"], best["beta"]):
                    text = f"**{text}**"
                cells.append(text + ("*" if _is_run(result, alpha, beta) else ""))
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
    """Every (alpha, beta) with all metrics; the best oIoU and mIoU in bold, the run's own setting marked."""
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

        note = "< run" if _is_run(result, alpha, beta) else ""
        table.add_row(f"{alpha:g}", f"{beta:g}", cell("oIoU"), cell("mIoU"),
                      *(f"{metrics['precision'][t]:.2f}" for t in thresholds), note)
    return table


# Viridis at eight evenly spaced points: readable in grey and for colour-blind eyes.
_VIRIDIS = (
    (68, 1, 84), (70, 50, 127), (54, 92, 141), (39, 127, 142),
    (31, 161, 135), (74, 194, 109), (159, 218, 58), (253, 231, 37),
)


def _colour(fraction: float) -> tuple[int, int, int]:
    position = min(max(fraction, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = min(int(position), len(_VIRIDIS) - 2)
    t = position - low
    return tuple(round(a + (b - a) * t) for a, b in zip(_VIRIDIS[low], _VIRIDIS[low + 1]))


def draw_heatmap(result: dict[str, Any]) -> Image.Image:
    """oIoU and mIoU over the alpha x beta grid, side by side, values in the cells.

    Each panel's colours span its own minimum to maximum. The run's own
    setting is outlined in red; the best cell of each panel says "best".
    """
    alphas, betas = result["alphas"], result["betas"]
    title_font, label_font = ImageFont.load_default(size=22), ImageFont.load_default(size=17)
    value_font, note_font = ImageFont.load_default(size=19), ImageFont.load_default(size=13)
    cell_w, cell_h, label_w, header_h, gap, margin = 92, 56, 120, 34, 40, 24
    run = result["run"]
    title = f"alpha x beta sweep: {result['dataset']}"
    in_grid = run["alpha"] in alphas and run["beta"] in betas
    footnote = (
        f"{'red outline: ' if in_grid else 'not in the grid: '}the run's own setting (alpha {run['alpha']:g}, "
        f"beta {run['beta']:g}); {run['sentences_checked'] - run['sentences_differing']} of "
        f"{run['sentences_checked']} of its picks reproduced"
    )
    panel_w = label_w + cell_w * len(betas)
    # Wide enough for the title and the footnote however small the grid.
    text_w = max(title_font.getlength(title), label_font.getlength(footnote))
    width = 2 * margin + max(2 * panel_w + gap, math.ceil(text_w))
    left = (width - 2 * panel_w - gap) // 2
    top = margin + 40
    height = top + 36 + header_h + cell_h * len(alphas) + 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, margin), title, font=title_font, fill="black", anchor="mt")
    for panel, metric in enumerate(("oIoU", "mIoU")):
        x0 = left + panel * (panel_w + gap)
        draw.text((x0 + panel_w // 2, top), f"{metric} (%)", font=title_font, fill="black", anchor="mt")
        grid_top = top + 36 + header_h
        draw.text((x0 + label_w // 2, grid_top - header_h // 2), "alpha \\ beta", font=label_font,
                  fill="black", anchor="mm")
        for j, beta in enumerate(betas):
            draw.text((x0 + label_w + j * cell_w + cell_w // 2, grid_top - header_h // 2), f"{beta:g}",
                      font=label_font, fill="black", anchor="mm")
        values = [[_value(result, alpha, beta, metric) for beta in betas] for alpha in alphas]
        low, high = min(map(min, values)), max(map(max, values))
        best = result["best"][metric]
        for i, alpha in enumerate(alphas):
            y = grid_top + i * cell_h
            draw.text((x0 + label_w // 2, y + cell_h // 2), f"{alpha:g}", font=label_font, fill="black",
                      anchor="mm")
            for j, beta in enumerate(betas):
                x = x0 + label_w + j * cell_w
                value = values[i][j]
                colour = _colour((value - low) / (high - low) if high > low else 0.5)
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=colour, outline="white")
                luminance = (0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]) / 255
                ink = "black" if luminance > 0.45 else "white"
                is_best = (alpha, beta) == (best["alpha"], best["beta"])
                centre_y = y + cell_h // 2 - (7 if is_best else 0)
                draw.text((x + cell_w // 2, centre_y), f"{value:.2f}", font=value_font, fill=ink, anchor="mm")
                if is_best:
                    draw.text((x + cell_w // 2, y + cell_h - 9), "best", font=note_font, fill=ink, anchor="mb")
                if _is_run(result, alpha, beta):
                    draw.rectangle((x + 1, y + 1, x + cell_w - 2, y + cell_h - 2), outline=(230, 30, 30), width=4)
    draw.text((margin, height - 16), footnote, font=label_font, fill="black", anchor="ls")
    return image
