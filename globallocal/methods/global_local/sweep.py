"""Alpha x beta sweeps of a finished, cached Global-Local run, without the models.

A run made with a feature cache holds everything the choice of proposal
depends on: the cache has every proposal's unblended global and local
features and the raw text features of every expression and noun phrase, and
each sentence record has its expression, noun phrase, ground-truth area and
the intersection of every proposal with the ground truth. For another alpha
or beta, the scores are computed again, the best proposal picked, and its
I = overlap and U = area + |gt| - I summed: the metrics of that setting, with
no image decoded and no model run.

The scoring calls the method's own rules (:mod:`.method`) one sentence at a
time, as the run scored them, so at the run's own alpha and beta it picks the
run's proposals bit for bit; the sweep checks that and warns when it does not
(features replayed on another device or library version than the run's).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from rich.table import Table

from ..sweeps import CachedEntry, Sweep, SweptRun, pick_agrees, precision_keys, reproduced, ties_note
from .method import feature_shapes, proposal_scores, scoring_visual, text_blend, visual_blend
from .settings import SWEPT_SETTINGS, GlobalLocalSettings
from .sweep_heatmap import draw_heatmap, grid_value, is_run_point

__all__ = ["SWEPT_SETTINGS", "format_table", "sweep"]

class _Replay:
    """The run's choices made again at every (alpha, beta) point, image by image, with the metrics summed."""

    def __init__(self, run: SweptRun, points: list[tuple[float, float]], run_point: tuple[float, float],
                 feature_norm: str) -> None:
        self.run, self.run_point, self.feature_norm = run, run_point, feature_norm
        self.family = run.config["cache"]["family"]
        self.totals = {point: run.tally() for point in points}
        # Sentences replayed at the run's point, picks unlike the run's, and picks of another proposal whose
        # score ties with the run's pick.
        self.checked = self.differing = self.tied = 0

    def add(self, entry: CachedEntry | None, records: list[dict[str, Any]]) -> None:
        """Sentences answered from one cache entry (None: the image had no proposals), at every point."""
        if entry is None:
            # No choice to replay: the empty prediction the run scored, at every setting.
            for total in self.totals.values():
                total.add_unanswered(records)
        else:
            self._add_records(entry, records)

    def _add_records(self, entry: CachedEntry, records: list[dict[str, Any]]) -> None:
        """Sentences answered from one cache entry, at every point."""
        for point, total in self.totals.items():
            scores = self._scores(records, entry, *point)
            picks = [int(torch.argmax(row)) for row in scores]
            for record, index in zip(records, picks):
                total.add(record, index, int(entry.areas[index]))
            if point == self.run_point:
                self.checked += len(records)
                agreement = [pick_agrees(row, index, record["index"])
                             for row, index, record in zip(scores, picks, records)]
                self.differing += agreement.count("other")
                self.tied += agreement.count("tie")

    def _scores(self, records: list[dict[str, Any]], entry: CachedEntry, alpha: float,
                beta: float) -> list[torch.Tensor]:
        """Every proposal's score (N,) for each sentence of one image at (alpha, beta)."""
        norm, family = self.feature_norm, self.family
        visual = scoring_visual(visual_blend(entry.tensors["global"], entry.tensors["local"], alpha, norm, family),
                                norm, family)
        scores = []
        for record in records:
            # One sentence at a time, stacked as Segmenter.text_features stacks a single phrase: the same bits.
            expression = torch.stack([self.run.text_features[record["expression"]]])
            noun_phrase = torch.stack([self.run.text_features[record["noun_phrase"]]])
            text = text_blend(expression, noun_phrase, beta, norm, family)
            scores.append(proposal_scores(text, visual, norm, family)[0])
        return scores


def _strings(records: list[dict[str, Any]]) -> list[str]:
    """The text features the replay of these sentences needs."""
    return [s for r in records for s in (r["expression"], r["noun_phrase"])]


def sweep(run: SweptRun, axes: dict[str, list[float] | None], started: float | None = None) -> Sweep:
    """The metrics of a Global-Local run at every (alpha, beta) of ``axes`` (None or absent: the run's value),
    with the Markdown and the heat map."""
    started = time.perf_counter() if started is None else started
    alphas, betas = axes.get("alpha"), axes.get("beta")
    run_dir, settings = run.directory, run.settings(GlobalLocalSettings)
    run_point = (settings.alpha, settings.beta)
    alphas = alphas or [run_point[0]]
    betas = betas or [run_point[1]]

    grid = [(alpha, beta) for alpha in alphas for beta in betas]
    points = grid if run_point in grid else [*grid, run_point]
    replay = _Replay(run, points, run_point, settings.feature_norm)
    for entry, records in run.sentences(_strings, feature_shapes):
        replay.add(entry, records)
    if replay.differing:
        warnings.warn(
            f"at the run's own alpha {run_point[0]} and beta {run_point[1]}, {replay.differing} of {replay.checked} "
            "sentences pick another proposal than the run did, and not one whose score ties with the run's pick "
            "(were the features made on another device or library version?); the sweep's numbers are approximate",
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
            "sentences_tied": replay.tied,
        },
        "seconds": time.perf_counter() - started,
    }
    return Sweep(result, _markdown(result), draw_heatmap(result))


# -- output ------------------------------------------------------------------


def _markdown(result: dict[str, Any]) -> str:
    run = result["run"]
    lines = [
        f"# alpha x beta sweep: {result['dataset']}",
        "",
        f"Run `{result['run_dir']}`, evaluated at alpha {run['alpha']:g}, beta {run['beta']:g} (marked *): "
        f"oIoU {run['metrics']['oIoU']:.2f}, mIoU {run['metrics']['mIoU']:.2f}; the sweep reproduces "
        f"{reproduced(run)} of its {run['sentences_checked']} picks{ties_note(run)}. Best values in bold.",
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
    thresholds = precision_keys(run["metrics"])
    header = ["alpha", "beta", "oIoU", "mIoU", *(f"P@{t}" for t in thresholds)]
    lines += ["", "## All metrics", "", "| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for item in result["results"]:
        metrics = item["metrics"]
        values = [metrics["oIoU"], metrics["mIoU"], *(metrics["precision"][t] for t in thresholds)]
        lines.append(f"| {item['alpha']:g} | {item['beta']:g} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines += ["", f"Computed in {result['seconds']:.1f} s from the run's records and feature cache."]
    return "\n".join(lines) + "\n"


def format_table(result: dict[str, Any]) -> Table:
    """Every (alpha, beta) with all metrics; the best oIoU and mIoU in bold, the run's own setting marked."""
    thresholds = precision_keys(result["run"]["metrics"])
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
