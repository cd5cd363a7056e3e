"""The evaluation loop over a REFER split: resumable, image by image.

Work is grouped by image: the proposals are computed and the segmenter's
``set_image`` is paid once per image, then every sentence of every ref on it
is answered with ``predict``. One JSON line per sentence goes to
``<out>/records.jsonl`` as it is produced, followed by an image-done marker
line; the file is fsynced after each marker. A run killed at any moment
therefore loses at most the image it was working on: on restart the file is
cut back to the last marker (dropping a half-written line and the records of
an unfinished image) and the loop continues with the next image. The final
metrics are computed from the records file alone, so a resumed run reports
exactly what an uninterrupted one does.

Every sentence record also keeps, for every proposal of its image, the
intersection with the ground truth ("overlaps", with "gt_area"), so any
other choice of proposal can be scored again without the masks: this is what
:mod:`globallocal.sweep` does with the features of a ``cache``
(:class:`~globallocal.cache.FeatureCache`). With a cache the image's
proposals and features, and the text features, are read from it when present
and written to it otherwise; the records are identical either way.

Under torchrun (``distributed``) the images are dealt round-robin to the
processes; each appends to its own ``records.rank<R>.jsonl`` with the same
resume logic, reads the others' files to skip what any session finished, and
rank 0 merges all files into the report. A run may be resumed with another
number of processes.

Without a cache the segmenter is duck-typed (``set_image(image, proposals)``
and ``predict(phrase)`` returning an object with ``mask``, ``index``,
``scores``, ``noun_phrase``, ``expression`` and ``truncated``); with one it
must be a :class:`~globallocal.Segmenter`. The proposal source is any
callable ``(image, record) -> Proposals``.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from .cache import FeatureCache, TextStore, image_digest, proposals_digest
from .datasets import EvaluationDataset, check_dataset, dataset_files, dataset_label, open_dataset
from .distributed import Distributed, from_environment
from .errors import GlobalLocalError, InputError
from .images import check_writable_folder, save_mask_png, save_text
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator, intersection_union, sentence_iou
from .phrasecut import BREAKDOWN, PHRASECUT
from .proposals import Proposals
from .refer import OVERLAP_RULES, ImageGroup, ImageRecord, Sentence
from .runfolder import (
    CONFIG_FILE,
    RECORDS_FILE,
    CompletedUnit,
    RunFolder,
    UnitLayout,
    check_free,
    read_completed,
    records_file,
)
from .text import encode_texts
from .weights import weights_change, weights_identity

__all__ = [
    "CONFIG_FILE",
    "RECORDS_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "CompletedImage",
    "EvaluationConfig",
    "EvaluationStopped",
    "ProposalSource",
    "check_evaluation_inputs",
    "read_records",
    "records_file",
    "referent",
    "run_evaluation",
]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# An image and all its sentences: the unit of work, recorded with an image-done marker.
IMAGE_UNITS = UnitLayout(marker="image_done", member="image_id", count="sentences")
CompletedImage = CompletedUnit

# Bumped when the records or config layout changes, so that an old out dir is
# refused instead of misread. 2: per-proposal overlaps, cache, rank files. 3: weights by content.
_FORMAT = 3

ProposalSource = Callable[[Image.Image, ImageRecord], Proposals]

_VERSIONED_PACKAGES = ("torch", "open_clip_torch", "spacy", "numpy", "pycocotools", "globallocal")


class EvaluationStopped(KeyboardInterrupt):
    """Raised by the ``stop_after_images`` hook; behaves like Ctrl-C for callers."""


@dataclass
class EvaluationConfig:
    """What is evaluated and where results go.

    ``split_by`` defaults per dataset (unc, unc, umd). ``limit`` keeps the
    first N images of the split (by image_id). ``save_masks`` is a folder for
    one PNG per sentence. ``overlap`` is the ground-truth rule of
    :func:`globallocal.refer.decode_segmentation`. ``settings`` (model,
    alpha, beta, preset, parser model, ...) is copied into the report
    verbatim and takes part in the resume check; it must be
    JSON-serialisable (other values are stored as their ``str``).
    ``weights`` names every weights file used (``{"clip": path,
    "freesolo": path, ...}``): they are identified by content
    (:func:`~globallocal.weights.weights_identity`), and a resume with other
    content is refused.

    PhraseCut (``dataset="phrasecut"``): ``images_dir`` defaults to
    ``data_root/images``, ``subset`` is all, unseen or seen, and ``overlap``
    does not apply (its ground truth is the union of its polygons).
    """

    dataset: str
    split: str
    data_root: str | Path
    images_dir: str | Path | None
    out_dir: str | Path
    split_by: str | None = None
    limit: int | None = None
    save_masks: str | Path | None = None
    overlap: str = "paper"
    settings: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str | Path] = field(default_factory=dict)
    subset: str = "all"

    def images_folder(self) -> Path | None:
        """Where the photos are: ``images_dir``, by default ``data_root/images`` for PhraseCut."""
        if self.images_dir is None and self.dataset == PHRASECUT:
            return Path(self.data_root) / "images"
        return None if self.images_dir is None else Path(self.images_dir)

    def identity(self) -> dict[str, Any]:
        """The configuration as stored in config.json and compared on resume.

        The out dir itself is left out (moving a run directory is harmless);
        paths are made absolute so the same data named from another working
        directory still matches; split_by is resolved to its default. The
        limit is left out too: a run of the first N images is extended by
        running it again with a larger limit or none.
        """

        def absolute(path: str | Path | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        identity = {
            "format": _FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "split_by": check_dataset(self.dataset, self.split, self.split_by, self.subset),
            "data_root": absolute(self.data_root),
            "images_dir": absolute(self.images_folder()),
            "save_masks": absolute(self.save_masks),
            "overlap": self.overlap,
            "settings": self.settings,
            # By content, not path: moved weights still resume, other weights at the same path do not.
            "weights": {role: weights_identity(path) for role, path in sorted(self.weights.items())},
        }
        if self.dataset == PHRASECUT:
            identity.update(overlap=None, subset=self.subset)
        # Round-trip so that tuples/lists and key order compare as stored.
        return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _session_rate(task: Task) -> float | None:
    """Images per second over this session's own elapsed time.

    rich's ``task.speed`` only looks at a short window of recent updates and
    stays blank when one image takes longer than that window, which on a CPU
    is every image; the images finished before a resume do not count.
    """
    done = task.completed - task.fields.get("resumed_at", 0)
    if not task.elapsed or done <= 0:
        return None
    return done / task.elapsed


class RateColumn(ProgressColumn):
    """Images per second, blank until this session has finished an image."""

    def render(self, task: Task) -> Text:
        rate = _session_rate(task)
        return Text("" if rate is None else f"{rate:.2f} img/s")


class RemainingColumn(ProgressColumn):
    """Time left at this session's rate."""

    def render(self, task: Task) -> Text:
        rate = _session_rate(task)
        if rate is None or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        left = round((task.total - task.completed) / rate)
        return Text(f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}", style="progress.remaining")


def read_records(out_dir: str | Path) -> list[CompletedImage]:
    """The fully recorded images of every records file of a run folder (read only)."""
    return read_completed(out_dir, IMAGE_UNITS)


def referent(record: dict[str, Any]) -> Any:
    """The id of what a sentence record refers to: a REFER ref_id or a PhraseCut task_id."""
    return record["task_id"] if "task_id" in record else record["ref_id"]


def _add_record(accumulator: MetricAccumulator, record: dict[str, Any]) -> None:
    accumulator.add(
        record["I"],
        record["U"],
        ref_id=referent(record),
        image_id=record["image_id"],
        no_proposals=record["no_proposals"],
    )


@contextmanager
def _about(label: str, sentence: Sentence) -> Iterator[None]:
    """Name the sentence in an error: over thousands of them the bare reason is not enough."""
    try:
        yield
    except GlobalLocalError as error:
        raise type(error)(f"{label} ({sentence.raw!r}): {error}") from None


def _check_size(proposals: Proposals, image: ImageRecord) -> None:
    size = (image.height, image.width)
    if len(proposals) > 0 and proposals.image_size != size:
        raise InputError(f"proposals for image {image.image_id} are {proposals.image_size}, the image is {size}")


def _set_image(
    image: Image.Image,
    record: ImageRecord,
    segmenter: Any,
    proposal_source: ProposalSource | None,
    cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None,
) -> tuple[Proposals | None, str | None]:
    """The image's proposals (None for a method without), with the segmenter set on the image; the cache entry used.

    The segmenter is set only when there is something to choose from. With a
    cache the entry is looked up by the proposal source's key before calling
    the source, or, for a source without a key, by the content of the
    proposals it returned; on a miss the features are computed and stored.
    """
    if proposal_source is None:  # the method draws its own mask
        segmenter.set_image(image)
        return None, None
    if cache is None:
        proposals = proposal_source(image, record)
        _check_size(proposals, record)
        if len(proposals) > 0:
            segmenter.set_image(image, proposals)
        return proposals, None
    pixels = image_digest(image)
    entry = None
    if proposal_key is not None:
        name = cache.entry_name(record.image_id, pixels, proposal_key)
        entry = cache.visual.load(name)
    if entry is not None:
        proposals = entry.proposals()
    else:
        proposals = proposal_source(image, record)
        if proposal_key is None:
            name = cache.entry_name(record.image_id, pixels, {"content": proposals_digest(proposals)})
            entry = cache.visual.load(name)
    _check_size(proposals, record)
    if entry is not None:
        if len(proposals) > 0:
            segmenter.set_features(image, proposals, entry.tensors)
    elif len(proposals) > 0:
        segmenter.set_image(image, proposals)
        cache.visual.save(name, proposals, segmenter.image_state.tensors)
    else:
        # Cached too, so that a source with a key is not asked again.
        cache.visual.save(name, proposals, {})
    return proposals, name


def _seed_text_features(segmenter: Any, texts: TextStore, phrase: str) -> None:
    """Give the segmenter the phrase's text features from the cache, encoding and storing the missing ones.

    Each missing string is encoded on its own, as ``predict`` encodes a
    phrase, so that cached features are bit-identical to fresh ones.
    """
    strings = list(dict.fromkeys(segmenter.method.text_strings(segmenter.parse(phrase))))
    found = texts.load(strings)
    for text in strings:
        if text not in found:
            found[text] = encode_texts([text], segmenter.clip)[0].cpu()
            texts.save(text, found[text])
    segmenter.add_text_features(strings, torch.stack([found[text] for text in strings]))


def _evaluate_image(
    group: ImageGroup,
    dataset: EvaluationDataset,
    segmenter: Any,
    proposal_source: ProposalSource | None,
    save_masks: Path | None,
    cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The records of every sentence on one image (proposals and features paid once), and its cache entry."""
    image = dataset.load_image(group.image)
    proposals, entry = _set_image(image, group.image, segmenter, proposal_source, cache, proposal_key)
    answerable = proposals is None or len(proposals) > 0
    masks = proposals.masks.numpy() if proposals is not None else None
    records = []
    for ref in group.refs:
        gt = dataset.gt_mask(ref)
        # |proposal AND gt| for every proposal: enough to score any choice later (U = area + |gt| - I).
        overlaps = np.count_nonzero(masks[:, gt], axis=1).tolist() if masks is not None else None
        for sentence in ref.sentences:
            record: dict[str, Any] = {
                "image_id": group.image.image_id,
                **dataset.sentence_fields(ref, sentence),
                "phrase": sentence.raw,
            }
            if answerable:
                with _about(dataset.sentence_label(ref, sentence), sentence):
                    if cache is not None:
                        _seed_text_features(segmenter, cache.text, sentence.raw)
                    result = segmenter.predict(sentence.raw)
                pred = result.mask
                intersection, union = intersection_union(pred, gt)
                record.update(
                    index=result.index,
                    score=result.score,
                    noun_phrase=result.noun_phrase,
                    expression=result.expression,
                    truncated=bool(result.truncated),
                    **result.record_fields(),
                )
                # Further answers of the method (HybridGL's "pure" one), each scored as the main answer is.
                others = {}
                for name, index in result.other_answers().items():
                    other_i, other_u = intersection_union(proposals.masks[index], gt)
                    others[name] = {"index": int(index), "I": other_i, "U": other_u}
                if others:
                    record["other_answers"] = others
            else:
                # No proposal to choose: an empty prediction, IoU 0 (never skipped).
                pred = None
                intersection, union = 0, int(gt.sum())
                record.update(index=None, score=None, noun_phrase=None, expression=None, truncated=False)
            record.update(
                I=intersection,
                U=union,
                IoU=sentence_iou(intersection, union),
                no_proposals=not answerable,
                gt_area=int(gt.sum()),
                overlaps=overlaps,
            )
            if save_masks is not None:
                path = save_masks / dataset.mask_name(ref, sentence)
                save_mask_png(np.zeros_like(gt) if pred is None else pred, path)
            records.append(record)
    return records, entry


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _subset_order(name: str) -> tuple[int, str]:
    return (BREAKDOWN.index(name) if name in BREAKDOWN else len(BREAKDOWN), name)


def _build_report(
    completed: list[CompletedImage],
    identity: dict[str, Any],
    out_dir: Path,
    total_images: int,
    processes: int,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report, from the records alone (and the dataset's ``notes`` on its selection).

    Records that name ``subsets`` (PhraseCut's) also give the metrics of
    each subset. Wall time is the sum of the per-image times over all
    sessions and processes: model loading and work lost to interruptions are
    not in it, so resumed and uninterrupted runs are comparable.
    """
    accumulator = MetricAccumulator()
    by_subset: dict[str, MetricAccumulator] = {}
    names = {name for done in completed for record in done.records for name in record.get("other_answers", {})}
    others = {name: MetricAccumulator() for name in sorted(names)}
    truncated = 0
    for done in completed:
        for record in done.records:
            _add_record(accumulator, record)
            for name in record.get("subsets", ()):
                _add_record(by_subset.setdefault(name, MetricAccumulator()), record)
            truncated += bool(record.get("truncated"))
            # A sentence without proposals has no answer of any kind: IoU 0 in every table.
            for name, total in others.items():
                _add_record(total, {**record, **record.get("other_answers", {}).get(name, {})})
    wall = sum(float(done.marker.get("seconds", 0.0)) for done in completed)
    extra: dict[str, Any] = {}
    if notes:
        extra["selection"] = notes
    if by_subset:
        extra["subsets"] = {
            name: {"mIoU": by_subset[name].miou, "oIoU": by_subset[name].oiou, "sentences": by_subset[name].sentences}
            for name in sorted(by_subset, key=_subset_order)
        }
    return {
        "metrics": accumulator.summary(),
        **extra,
        "other_answers": {name: total.summary() for name, total in others.items()},
        "truncated_sentences": truncated,
        "images_total": total_images,
        "wall_time_s": wall,
        "images_per_second": len(completed) / wall if wall > 0 else None,
        "processes": processes,
        "config": identity,
        "out_dir": str(out_dir),
        "versions": _package_versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _report_markdown(report: dict[str, Any]) -> str:
    config, metrics = report["config"], report["metrics"]
    thresholds = [f"{t:.1f}" for t in PRECISION_THRESHOLDS]
    header = ["answer", "oIoU", "mIoU", *(f"P@{t}" for t in thresholds)]
    answers = {"final": metrics, **report.get("other_answers", {})}
    method = config.get("settings", {}).get("method", "global-local")
    lines = [
        f"# {method} evaluation: {dataset_label(config)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for name, answer in answers.items():
        values = [answer["oIoU"], answer["mIoU"], *(answer["precision"][t] for t in thresholds)]
        lines.append(f"| {name} | " + " | ".join(f"{value:.2f}" for value in values) + " |")
    lines += [
        "",
        f"- images: {metrics['images']}, refs: {metrics['refs']}, sentences: {metrics['sentences']}",
        f"- images without proposals: {metrics['no_proposal_images']} ({metrics['no_proposal_refs']} refs, "
        f"{metrics['no_proposal_sentences']} sentences, scored as IoU 0)",
        f"- expressions truncated to CLIP's 77 tokens: {report['truncated_sentences']}",
        f"- cumulative I / U: {metrics['sum_intersection']} / {metrics['sum_union']}",
        f"- wall time: {report['wall_time_s']:.1f} s",
    ]
    if "selection" in report:
        selection = report["selection"]
        dropped = selection["dropped_by_reason"].items()
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in dropped)
        lines.append(
            f"- subset {selection['subset']}: {selection['tasks']} of {selection['tasks_in_files']} tasks, "
            f"{selection['tasks_dropped']} dropped ({reasons})"
        )
    if "subsets" in report:
        lines += ["", "## mIoU by subset", "", "| subset | mIoU | oIoU | sentences |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {name} | {values['mIoU']:.2f} | {values['oIoU']:.2f} | {values['sentences']} |"
            for name, values in report["subsets"].items()
        ]
    lines += [
        "",
        "## Configuration",
        "",
        "| key | value |",
        "| --- | --- |",
    ]
    flat = {key: value for key, value in config.items() if key != "settings"}
    flat.update({f"settings.{key}": value for key, value in config.get("settings", {}).items()})
    lines += [f"| {key} | {json.dumps(value)} |" for key, value in sorted(flat.items())]
    lines += ["", "## Versions", "", "| package | version |", "| --- | --- |"]
    lines += [f"| {name} | {version} |" for name, version in report["versions"].items()]
    return "\n".join(lines) + "\n"


def _ground_truth_source(dataset: EvaluationDataset) -> ProposalSource:
    def source(image: Image.Image, record: ImageRecord) -> Proposals:
        return dataset.instance_masks(record.image_id)

    return source


def _run_identity(
    config: EvaluationConfig, segmenter: Any, cache: FeatureCache | None, proposal_key: dict[str, Any] | None
) -> dict[str, Any]:
    """config.json: the configuration, plus where the cache is and what a sweep needs to replay the scores."""
    identity = config.identity()
    if cache is not None:
        identity["cache"] = {
            **cache.describe(),
            "proposals": "content" if proposal_key is None else proposal_key,
            "scoring": segmenter.method.describe(),
        }
    else:
        identity["cache"] = None
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def check_evaluation_inputs(config: EvaluationConfig, main: bool | None = None) -> None:
    """What can be checked in a second, before any model loads (seconds to minutes): options, paths, the run folder.

    Refuses a bad --limit, an unknown dataset, split or overlap rule, a data
    root without the split's files, a missing images folder, a run folder
    that is a file, read-only or in use, and a --save-masks folder that
    cannot be written. The run folder's lock is only probed by the main
    process (``main``; default: rank 0 of torchrun's environment), which
    takes it later.
    """
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit must be at least 1, got {config.limit}")
    if config.overlap not in OVERLAP_RULES:
        raise InputError(f"unknown overlap rule {config.overlap!r}; use one of {', '.join(OVERLAP_RULES)}")
    split_by = check_dataset(config.dataset, config.split, config.split_by, config.subset)
    images_dir = config.images_folder()
    if images_dir is None:
        raise InputError(f"--images is required for {config.dataset}: the COCO train2014 image folder")
    layout = "VGPhraseCut_v0 folder" if config.dataset == PHRASECUT else f"REFER folder holding {config.dataset}/"
    if not Path(config.data_root).is_dir():
        raise InputError(f"data root not found: {config.data_root}; give the {layout}")
    for path in dataset_files(config.dataset, config.split, config.data_root, split_by):
        if not path.is_file():
            raise InputError(f"{path} not found; is {config.data_root} the {layout}?")
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    if main is None:
        main = from_environment().is_main
    if main:
        check_free(config.out_dir)
    else:
        check_writable_folder(config.out_dir, "run folder")
    if config.save_masks is not None:
        check_writable_folder(config.save_masks, "--save-masks")


def run_evaluation(
    config: EvaluationConfig,
    segmenter: Any,
    proposal_source: ProposalSource | str | None,
    progress: bool = True,
    stop_after_images: int | None = None,
    *,
    cache: FeatureCache | None = None,
    proposal_key: dict[str, Any] | None = None,
    distributed: Distributed | None = None,
) -> dict[str, Any]:
    """Evaluate a split, resuming from ``config.out_dir`` if it holds a run of the same config.

    ``proposal_source`` is a callable ``(image, record) -> Proposals``,
    ``"gt"``: the image's ground-truth instance masks from instances.json
    (the oracle setting papers report as an upper bound), or None for a
    method that draws its own mask (``method.uses_proposals`` false).

    ``cache``: read and write proposals and features there (the segmenter
    must then be a :class:`~globallocal.Segmenter`). ``proposal_key``: the
    source's cache key (:func:`~globallocal.cache.proposal_source_key`), for
    a deterministic source worth caching; without one the source is called
    for every image and the cache entry is found by the proposals' content.

    ``distributed``: this process's place under torchrun; every process must
    call this with the same arguments. Only rank 0 shows progress.

    Returns the report (also written to report.json / report.md).
    ``stop_after_images`` raises :class:`EvaluationStopped` once that many
    images have been completed in this call and more remain, leaving the out
    dir exactly as an interruption would (used to test resuming).
    """
    place = distributed or Distributed()
    if place.is_main:
        check_evaluation_inputs(config, main=True)
    identity = _run_identity(config, segmenter, cache, proposal_key)
    dataset = open_dataset(
        config.dataset,
        config.split,
        config.data_root,
        split_by=identity["split_by"],
        images_dir=config.images_dir,
        overlap=config.overlap,
        subset=config.subset,
    )
    if proposal_source == "gt":
        proposal_source = _ground_truth_source(dataset)
    elif proposal_source is None:
        if getattr(getattr(segmenter, "method", None), "uses_proposals", True):
            raise InputError("this method needs mask proposals; give a proposal source")
    elif isinstance(proposal_source, str):
        raise InputError(f"unknown proposal source '{proposal_source}'")
    every_group = dataset.images()
    groups = every_group[: config.limit]
    missing = dataset.missing_images(groups)
    if missing:
        raise InputError(
            f"{len(missing)} of {len(groups)} images are missing from {missing[0].parent}, e.g. {missing[0]}"
        )

    out_dir = Path(config.out_dir)
    # Rank 0 locks the folder and writes config.json; the others check it once it is there.

    def explain(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
        return weights_change(stored.get("weights"), current.get("weights"), config.weights)

    folder = RunFolder(out_dir, IMAGE_UNITS, rank=place.rank, world_size=place.world_size, main=place.is_main)
    with folder:
        if place.is_main:
            folder.check_config(identity, explain=explain)
            if cache is not None:
                cache.prepare()
        place.barrier()
        if not place.is_main:
            folder.check_config(identity, explain=explain)
        folder.open_records()
        report = _evaluate_share(
            folder, config, identity, dataset, groups, every_group, segmenter, proposal_source, place, progress,
            stop_after_images, cache, proposal_key,
        )
    return report


def _evaluate_share(
    folder: RunFolder,
    config: EvaluationConfig,
    identity: dict[str, Any],
    dataset: EvaluationDataset,
    groups: list[ImageGroup],
    every_group: list[ImageGroup],
    segmenter: Any,
    proposal_source: ProposalSource,
    place: Distributed,
    progress: bool,
    stop_after_images: int | None,
    cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None,
) -> dict[str, Any]:
    """This process's images not yet recorded, then (rank 0) the report of every file's records.

    ``groups`` are the images to evaluate (the first ``limit``), ``every_group`` the split's: images past the
    limit may be recorded by an earlier run with a larger one; they are kept, not reported.
    """
    out_dir = folder.directory
    completed = folder.read_completed()
    expected = {group.image.image_id: group.sentence_count for group in every_group}
    for done in completed:
        if expected.get(done.marker["image_done"]) != done.marker["sentences"]:
            raise InputError(
                f"the records in {out_dir} do not match the dataset (image {done.marker['image_done']}); "
                "use another --out or delete that directory"
            )
    in_limit = {group.image.image_id for group in groups}
    completed = [done for done in completed if done.marker["image_done"] in in_limit]
    done_ids = {done.marker["image_done"] for done in completed}
    share = place.shard(groups)
    todo = [group for group in share if group.image.image_id not in done_ids]
    save_masks = Path(config.save_masks) if config.save_masks is not None else None

    running = MetricAccumulator()
    for done in completed:
        for record in done.records:
            _add_record(running, record)

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[sentences]} sentences"),
        TextColumn("oIoU {task.fields[oiou]:.2f}  mIoU {task.fields[miou]:.2f}"),
        TimeElapsedColumn(),
        RemainingColumn(),
    )
    description = f"{config.dataset} {config.split}"
    if place.world_size > 1:
        description += f" (rank 0's share of {place.world_size})"
    with Progress(*columns, console=Console(stderr=True), disable=not (progress and place.is_main)) as bar:
        task = bar.add_task(
            description,
            total=len(share),
            completed=len(share) - len(todo),
            resumed_at=len(share) - len(todo),
            sentences=running.sentences,
            oiou=running.oiou,
            miou=running.miou,
        )
        for count, group in enumerate(todo, start=1):
            started = time.perf_counter()
            records, entry = _evaluate_image(
                group, dataset, segmenter, proposal_source, save_masks, cache, proposal_key
            )
            for record in records:
                _add_record(running, record)
            marker = {"image_done": group.image.image_id, "seconds": time.perf_counter() - started}
            if entry is not None:
                marker["cache_entry"] = entry
            folder.append(records, marker)
            bar.update(task, advance=1, sentences=running.sentences, oiou=running.oiou, miou=running.miou)
            if stop_after_images is not None and count >= stop_after_images and count < len(todo):
                raise EvaluationStopped(f"stopped after {count} images")

    # Every process has recorded its share before rank 0 reads them all.
    place.barrier()
    if place.is_main:
        order = {group.image.image_id: index for index, group in enumerate(groups)}
        completed = sorted(
            (done for done in read_records(out_dir) if done.marker["image_done"] in order),
            key=lambda done: order[done.marker["image_done"]],
        )
        report = _build_report(completed, identity, out_dir, len(groups), place.world_size, dataset.report_notes())
        save_text(json.dumps(report, indent=2) + "\n", out_dir / REPORT_JSON)
        save_text(_report_markdown(report), out_dir / REPORT_MD)
    place.barrier()
    if not place.is_main:
        report = json.loads((out_dir / REPORT_JSON).read_text(encoding="utf-8"))
    return report
