"""HybridGL sweeps of a finished, cached evaluation run: beta, the final mix and the GEM k values.

Everything these weights act on is in the run: the cache holds every
proposal's hybrid feature, GEM's visual tokens, the SAM boxes, the masks and
the raw text features of every string the method encoded; the run's
configuration holds the settings and CLIP's temperature tau; each sentence
record holds the text analysis (noun phrase, other noun phrases, direction
and relation flags), K1 and K2 as applied, and every proposal's intersection
with the ground truth. Per sentence the quantities no swept weight changes
(other-noun scores, the heat map's region means) are computed once, then
every point of the grid decides with the method's own rules
(:mod:`globallocal.methods.hybridgl.replay`) and both answers, guided and
pure, are scored.

K1 and K2 come from the records, so a run with ``sticky_topk``
(Q-sticky-k) is replayed exactly whatever order, resumption or process
split its images had. At the run's own weights the sweep checks that it
picks the run's answers and warns otherwise (features replayed on another
device or library version than the run's).
"""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Any

import torch
from rich.table import Table

from ...data.bounded import NUMBER, check_shape
from ...errors import InputError
from ..sweeps import CachedEntry, Sweep, SweptRun, pick_agrees, precision_keys, reproduced, ties_note
from .method import NEGATIVE_PROMPT, feature_shapes
from .replay import replay, sentence_quantities
from .settings import SWEPT_SETTINGS, HybridGLSettings
from .text import Guided

__all__ = ["ANSWERS", "SWEPT_SETTINGS", "format_table", "sweep"]

ANSWERS = ("guided", "pure")
"""HybridGL's answer with spatial guidance, and without (the best CLIP score)."""

_RECORD_FIELDS = ("other_noun_phrases", "direction", "relation_flag", "k1", "k2")

Point = tuple[float, ...]
"""Values of SWEPT_SETTINGS, in that order."""


# What the replay reads of each answered sentence's record beyond what every sweep reads.
_RECORD = {"other_noun_phrases": [str], "direction": str, "relation_flag": str, "k1": int, "k2": int,
           "other_answers": {"pure": {"index": int}}}


class _Replay:
    """The run's two answers decided again at every point, image by image, with the metrics summed."""

    def __init__(self, run: SweptRun, settings: HybridGLSettings, tau: torch.Tensor, points: list[Point],
                 run_point: Point) -> None:
        self.run, self.settings, self.tau, self.run_point = run, settings, tau, run_point
        self.totals = {point: {answer: run.tally() for answer in ANSWERS} for point in points}
        # Sentences replayed at the run's point, those unlike the run's, and those whose unlike answers tie with
        # the run's.
        self.checked = self.differing = self.tied = 0

    def add(self, entry: CachedEntry | None, records: list[dict[str, Any]]) -> None:
        """Sentences answered from one cache entry (None: the image had no proposals), both answers at every
        point."""
        if entry is None:
            for totals in self.totals.values():
                for total in totals.values():
                    total.add_unanswered(records)
        else:
            self._add_records(entry, records)

    def strings(self, records: list[dict[str, Any]]) -> list[str]:
        """The text features the replay of these sentences needs (their records checked first)."""
        missing = [name for name in _RECORD_FIELDS if name not in records[0]]
        if missing:
            raise InputError(f"the records of {self.run.directory} lack {', '.join(missing)} (a run made before "
                             "HybridGL sweeps); evaluate it again to sweep it")
        for record in records:
            where = f"the records of {self.run.directory}, image {record['image_id']}"
            check_shape(record, _RECORD, where, "; evaluate the run again")
            count = len(record["overlaps"])
            if not (1 <= record["k1"] <= count and 1 <= record["k2"] <= count
                    and 0 <= record["other_answers"]["pure"]["index"] < count):
                raise InputError(f"{where}: k1, k2 or the pure answer of {str(record.get('phrase'))!r:.60} is "
                                 "outside its proposals; evaluate the run again")
        s = self.settings
        return [text for r in records for text in (
            r["expression"], r["noun_phrase"], s.gem_prompt.format(r["noun_phrase"]),
            *(NEGATIVE_PROMPT.format(other) for other in r["other_noun_phrases"]),
        )]

    def _add_records(self, entry: CachedEntry, records: list[dict[str, Any]]) -> None:
        """Sentences answered from one cache entry, both answers at every point."""
        masks = entry.proposals().masks
        s = self.settings
        for record in records:
            sentence = sentence_quantities(
                s, entry.tensors, masks, self.tau, self.run.text_features, record["expression"], record["noun_phrase"],
                record["other_noun_phrases"], record["direction"], record["relation_flag"],
            )
            for point, totals in self.totals.items():
                guided = replay(s, entry.tensors, sentence, self.tau, record["k1"], record["k2"],
                                **dict(zip(SWEPT_SETTINGS, point)))
                answers = {"guided": guided.index, "pure": guided.pure_index}
                for answer, index in answers.items():
                    totals[answer].add(record, index, int(entry.areas[index]))
                if point == self.run_point:
                    pure = record["other_answers"]["pure"]["index"]
                    agreement = {_guided_agrees(guided, record["index"]),
                                 pick_agrees(guided.scores, guided.pure_index, pure)}
                    self.checked += 1
                    self.differing += "other" in agreement
                    self.tied += agreement in ({"tie"}, {"same", "tie"})


def _guided_agrees(guided: Guided, recorded: int) -> str:
    """:func:`~globallocal.methods.sweeps.pick_agrees` for the guided answer: the run's must be a candidate whose
    final score ties with the replay's answer."""
    if guided.index == recorded:
        return "same"
    places = guided.candidates.tolist()
    if recorded not in places:
        return "other"
    return pick_agrees(guided.final, places.index(guided.index), places.index(recorded))


def sweep(run: SweptRun, axes: dict[str, list[float] | None], started: float | None = None) -> Sweep:
    """The metrics of both answers of a HybridGL run at every point of the grid ``axes`` spans
    (values per :data:`SWEPT_SETTINGS` name; None or absent: the run's value), with the Markdown.

    There is no heat map: the grid has up to five axes.
    """
    started = time.perf_counter() if started is None else started
    unknown = sorted(set(axes) - set(SWEPT_SETTINGS))
    if unknown:
        raise InputError(f"{unknown[0]} cannot be swept; a HybridGL sweep varies {', '.join(SWEPT_SETTINGS)}")
    if "tau" not in run.scoring:
        raise InputError(f"{run.directory} does not record CLIP's temperature (a run made before HybridGL sweeps); "
                         "evaluate it again to sweep it")
    settings = run.settings(HybridGLSettings, {"tau": NUMBER})
    tau = torch.tensor(run.scoring["tau"], dtype=torch.float32)
    run_point = tuple(getattr(settings, name) for name in SWEPT_SETTINGS)
    swept = [name for name in SWEPT_SETTINGS if axes.get(name) is not None] or ["beta"]
    values = {name: axes.get(name) or [getattr(settings, name)] for name in SWEPT_SETTINGS}
    grid = list(itertools.product(*(values[name] for name in SWEPT_SETTINGS)))
    replayer = _Replay(run, settings, tau, grid if run_point in grid else [*grid, run_point], run_point)
    for entry, records in run.sentences(replayer.strings, feature_shapes):
        replayer.add(entry, records)
    if replayer.differing:
        warnings.warn(
            f"at the run's own weights, {replayer.differing} of {replayer.checked} sentences give other answers than "
            "the run did, and not ones whose scores tie with the run's (were the features made on another device or "
            "library version?); the sweep's numbers are approximate",
            stacklevel=3,
        )

    def summary(point: Point) -> dict[str, Any]:
        return {answer: total.summary() for answer, total in replayer.totals[point].items()}

    results = [{**dict(zip(SWEPT_SETTINGS, point)), "metrics": summary(point)} for point in grid]
    best: dict[str, dict[str, Any]] = {}
    for answer in ANSWERS:
        for metric in ("oIoU", "mIoU"):
            top = max(results, key=lambda item, a=answer, m=metric: item["metrics"][a][m])
            best.setdefault(answer, {})[metric] = {
                **{name: top[name] for name in swept}, "value": top["metrics"][answer][metric]}
    result = {
        "method": "hybridgl",
        "run_dir": str(run.directory),
        "dataset": run.dataset,
        "axes": {name: values[name] for name in swept},
        "fixed": {name: getattr(settings, name) for name in SWEPT_SETTINGS if name not in swept},
        "results": results,
        "best": best,
        "run": {
            **dict(zip(SWEPT_SETTINGS, run_point)),
            "metrics": summary(run_point),
            "sentences_checked": replayer.checked,
            "sentences_differing": replayer.differing,
            "sentences_tied": replayer.tied,
        },
        "seconds": time.perf_counter() - started,
    }
    return Sweep(result, _markdown(result))


# -- output ------------------------------------------------------------------

def _metric(metrics: dict[str, Any], name: str) -> float:
    return metrics[name] if name in metrics else metrics["precision"][name.removeprefix("P@")]


def _is_run(result: dict[str, Any], item: dict[str, Any]) -> bool:
    return all(item[name] == result["run"][name] for name in SWEPT_SETTINGS)


def _columns(result: dict[str, Any], metrics: tuple[str, ...]) -> tuple[list[str], list[tuple[list[str], bool]]]:
    """Header and rows of the table of every point: the swept weights, then each answer's metrics, the best
    value of each metric column marked **...**; with each row, whether it is the run's own point."""
    swept = list(result["axes"])
    keys = [(answer, metric) for answer in ANSWERS for metric in metrics]
    top = {key: max(_metric(item["metrics"][key[0]], key[1]) for item in result["results"]) for key in keys}
    rows = []
    for item in result["results"]:
        cells = [f"{item[name]:g}" for name in swept]
        for key in keys:
            value = _metric(item["metrics"][key[0]], key[1])
            cells.append(f"**{value:.2f}**" if value == top[key] else f"{value:.2f}")
        rows.append((cells, _is_run(result, item)))
    return [*swept, *(f"{answer} {metric}" for answer, metric in keys)], rows


def _markdown(result: dict[str, Any]) -> str:
    run = result["run"]
    own = ", ".join(f"{name} {run[name]:g}" for name in SWEPT_SETTINGS)
    scores = "; ".join(f"{answer}: oIoU {run['metrics'][answer]['oIoU']:.2f}, mIoU {run['metrics'][answer]['mIoU']:.2f}"
                       for answer in ANSWERS)
    fixed = ", ".join(f"{name} {value:g}" for name, value in result["fixed"].items())
    fixed = f"Fixed at the run's values: {fixed}. " if fixed else ""
    metrics = ("oIoU", "mIoU", *(f"P@{t}" for t in precision_keys(run["metrics"][ANSWERS[0]])))
    header, rows = _columns(result, metrics)
    lines = [
        f"# HybridGL sweep: {result['dataset']}",
        "",
        f"Run `{result['run_dir']}`, evaluated at {own} (marked *): {scores}. The sweep reproduces both answers "
        f"of {reproduced(run)} of its {run['sentences_checked']} sentences{ties_note(run)}.",
        "",
        f"Guided: the answer with spatial guidance; pure: the best CLIP score. Best values in bold. {fixed}"
        "No heat map: a HybridGL grid has up to five axes.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " ---: |" * len(header),
        *("| " + " | ".join([cells[0] + ("*" if is_run else ""), *cells[1:]]) + " |" for cells, is_run in rows),
        "",
        f"Computed in {result['seconds']:.1f} s from the run's records and feature cache.",
    ]
    return "\n".join(lines) + "\n"


def format_table(result: dict[str, Any]) -> Table:
    """Every point with oIoU and mIoU of both answers; the best of each column in bold, the run's point marked."""
    header, rows = _columns(result, ("oIoU", "mIoU"))
    table = Table(title=f"HybridGL sweep: {result['dataset']}")
    for name in header:
        table.add_column(name, justify="right")
    table.add_column("", no_wrap=True)
    for cells, is_run in rows:
        table.add_row(*(f"[bold]{cell[2:-2]}[/]" if cell.startswith("**") else cell for cell in cells),
                      "< run" if is_run else "")
    return table
