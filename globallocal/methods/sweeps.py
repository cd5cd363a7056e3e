"""What a method's sweep is handed and hands back, and the rules every sweep shares.

``globallocal sweep`` (:func:`globallocal.runs.sweep.run_sweep`) opens a
finished cached run and gives it to the sweep module the method's registry
entry names (:attr:`~globallocal.methods.MethodSpec.sweep_module`) as a
:class:`SweptRun`: the settings the run scored with, its answered sentences
with their cache entries (read and checked) and a :class:`Tally` for the
metrics of each answer at each point. The module decides again with the
method's own rules and hands back a :class:`Sweep` (the result, its
Markdown, a heat map where it draws one), which the run folder's side
writes. So a method folder reads and writes nothing of a run folder itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..proposals import Proposals
from .settings import MethodSettings

__all__ = [
    "TIE_TOLERANCE", "CachedEntry", "Sweep", "SweptRun", "Tally", "pick_agrees", "precision_keys",
    "reproduced", "ties_note",
]


class CachedEntry(Protocol):
    """One image's cached proposals and features (float32, CPU), as a sweep reads them."""

    areas: np.ndarray
    tensors: dict[str, torch.Tensor]

    def proposals(self) -> Proposals:
        """The proposals, masks decoded."""


class Tally(Protocol):
    """The metrics of one answer at one point of a sweep, summed sentence by sentence."""

    def add(self, record: dict[str, Any], index: int, area: int) -> None:
        """The sentence of ``record`` answered with proposal ``index`` (``area`` pixels): the record's overlap
        with the ground truth is the intersection."""

    def add_unanswered(self, records: list[dict[str, Any]]) -> None:
        """Sentences of an image without proposals: the empty prediction the run scored (IoU 0)."""

    def summary(self) -> dict[str, Any]:
        """The metrics and counts, as evaluate's report has them."""


class SweptRun(Protocol):
    """A finished evaluation run made with ``--cache``, as a method's sweep reads it."""

    directory: Path
    config: dict[str, Any]
    text_features: dict[str, torch.Tensor]
    """The cached text features read so far, by string (strings recur across images)."""

    @property
    def scoring(self) -> dict[str, Any]:
        """The method and every setting the run scored with."""

    @property
    def dataset(self) -> str:
        """The dataset and split, as a title names them."""

    def settings(self, kind: type[MethodSettings], extra: Any = None) -> Any:
        """The method's settings as the run recorded them, each checked (and the scoring values of the shape
        ``extra``)."""

    def sentences(
        self, strings: Callable[[list[dict[str, Any]]], list[str]],
        shapes: Callable[[int, int], Mapping[str, tuple[int | None, ...]]],
    ) -> Iterator[tuple[CachedEntry | None, list[dict[str, Any]]]]:
        """Every image's sentence records by the cache entry they were answered from (None: no proposals), each
        checked, with the text features of ``strings(records)`` in :attr:`text_features` and the entry's
        features of the shapes ``shapes(N, D)`` gives for its N proposals and text features D wide (None: any
        size)."""

    def tally(self) -> Tally:
        """A new, empty tally."""


@dataclass
class Sweep:
    """What a method's sweep hands back to be written: sweep.json (``result``), sweep.md, and sweep.png when
    the method draws a heat map."""

    result: dict[str, Any]
    markdown: str
    heat_map: Image.Image | None = None


TIE_TOLERANCE = 1e-4
"""Scores this close, relative to the largest, are a tie: the last bits of a dot product follow the order of
its sums, which the number of threads and the library version change, so a replay may break a tie the other
way than the run did."""


def pick_agrees(scores: torch.Tensor, picked: int, recorded: int) -> str:
    """Whether a replay's pick among ``scores`` is the run's: "same", "tie" (another proposal whose score ties
    with the pick's within :data:`TIE_TOLERANCE`; NaN ties with NaN), or "other"."""
    if picked == recorded:
        return "same"
    if not 0 <= recorded < len(scores):
        return "other"
    ours, theirs = float(scores[picked]), float(scores[recorded])
    if math.isnan(ours) or math.isnan(theirs):
        return "tie" if math.isnan(ours) and math.isnan(theirs) else "other"
    finite = scores[torch.isfinite(scores)]
    scale = float(finite.abs().max()) if len(finite) else 0.0
    return "tie" if abs(ours - theirs) <= TIE_TOLERANCE * max(scale, 1e-6) else "other"


def reproduced(run: dict[str, Any]) -> int:
    """The sentences a sweep's ``run`` summary says it answered as the run did, at the run's own setting."""
    return run["sentences_checked"] - run["sentences_differing"] - run["sentences_tied"]


def ties_note(run: dict[str, Any]) -> str:
    """What a sweep's Markdown says of the ties it met at the run's own setting (nothing when none)."""
    tied = run["sentences_tied"]
    return (f" ({tied} more answer with another proposal whose score ties with the run's answer, within "
            f"{TIE_TOLERANCE:g} of the largest score)") if tied else ""


def precision_keys(metrics: dict[str, Any]) -> list[str]:
    """The precision thresholds of a summary, as its keys name them ("0.5", ...), in order."""
    return list(metrics["precision"])
