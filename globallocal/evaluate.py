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
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .cache import FeatureCache, TextStore, image_digest, proposals_digest
from .distributed import Distributed, from_environment
from .errors import GlobalLocalError, InputError
from .images import check_writable_folder, save_mask_png, save_text
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator, intersection_union, sentence_iou
from .proposals import Proposals
from .refer import OVERLAP_RULES, ImageGroup, ImageRecord, Ref, ReferDataset, Sentence, resolve_split
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
    "format_report_table",
    "read_records",
    "records_file",
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
    """

    dataset: str
    split: str
    data_root: str | Path
    images_dir: str | Path
    out_dir: str | Path
    split_by: str | None = None
    limit: int | None = None
    save_masks: str | Path | None = None
    overlap: str = "paper"
    settings: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str | Path] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The configuration as stored in config.json and compared on resume.

        The out dir itself is left out (moving a run directory is harmless);
        paths are made absolute so the same data named from another working
        directory still matches; split_by is resolved to its default.
        """

        def absolute(path: str | Path | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        identity = {
            "format": _FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "split_by": resolve_split(self.dataset, self.split, self.split_by),
            "data_root": absolute(self.data_root),
            "images_dir": absolute(self.images_dir),
            "limit": self.limit,
            "save_masks": absolute(self.save_masks),
            "overlap": self.overlap,
            "settings": self.settings,
            # By content, not path: moved weights still resume, other weights at the same path do not.
            "weights": {role: weights_identity(path) for role, path in sorted(self.weights.items())},
        }
        # Round-trip so that tuples/lists and key order compare as stored.
        return json.loads(json.dumps(identity, sort_keys=True, default=str))


class _RateColumn(ProgressColumn):
    """Images per second, blank until rich has a speed estimate."""

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:.2f} img/s")


def read_records(out_dir: str | Path) -> list[CompletedImage]:
    """The fully recorded images of every records file of a run folder (read only)."""
    return read_completed(out_dir, IMAGE_UNITS)


def _add_record(accumulator: MetricAccumulator, record: dict[str, Any]) -> None:
    accumulator.add(
        record["I"],
        record["U"],
        ref_id=record["ref_id"],
        image_id=record["image_id"],
        no_proposals=record["no_proposals"],
    )


@contextmanager
def _about(ref: Ref, sentence: Sentence) -> Iterator[None]:
    """Name the sentence in an error: over thousands of them the bare reason is not enough."""
    try:
        yield
    except GlobalLocalError as error:
        raise type(error)(f"ref {ref.ref_id} sentence {sentence.sent_id} ({sentence.raw!r}): {error}") from None


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
    dataset: ReferDataset,
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
                "ref_id": ref.ref_id,
                "sent_id": sentence.sent_id,
                "phrase": sentence.raw,
            }
            if answerable:
                with _about(ref, sentence):
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
                path = save_masks / f"{ref.ref_id}_{sentence.sent_id}.png"
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


def _build_report(
    completed: list[CompletedImage], identity: dict[str, Any], out_dir: Path, total_images: int, processes: int
) -> dict[str, Any]:
    """The report, from the records alone.

    Wall time is the sum of the per-image times over all sessions and
    processes: model loading and work lost to interruptions are not in it, so
    resumed and uninterrupted runs are comparable.
    """
    accumulator = MetricAccumulator()
    names = {name for done in completed for record in done.records for name in record.get("other_answers", {})}
    others = {name: MetricAccumulator() for name in sorted(names)}
    truncated = 0
    for done in completed:
        for record in done.records:
            _add_record(accumulator, record)
            truncated += bool(record.get("truncated"))
            # A sentence without proposals has no answer of any kind: IoU 0 in every table.
            for name, total in others.items():
                _add_record(total, {**record, **record.get("other_answers", {}).get(name, {})})
    wall = sum(float(done.marker.get("seconds", 0.0)) for done in completed)
    return {
        "metrics": accumulator.summary(),
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
        f"# {method} evaluation: {config['dataset']} {config['split']} ({config['split_by']})",
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


def _ground_truth_source(dataset: ReferDataset) -> ProposalSource:
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
    split_by = resolve_split(config.dataset, config.split, config.split_by)
    data_dir = Path(config.data_root) / config.dataset
    if not Path(config.data_root).is_dir():
        raise InputError(f"data root not found: {config.data_root}; give the REFER folder holding {config.dataset}/")
    for name in (f"refs({split_by}).p", "instances.json"):
        if not (data_dir / name).is_file():
            raise InputError(f"{data_dir / name} not found; is {config.data_root} the REFER data root?")
    if not Path(config.images_dir).is_dir():
        raise InputError(f"images folder not found: {config.images_dir}; give the COCO train2014 folder")
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
    dataset = ReferDataset(
        config.data_root,
        config.dataset,
        config.split,
        split_by=identity["split_by"],
        images_dir=config.images_dir,
        overlap=config.overlap,
    )
    if proposal_source == "gt":
        proposal_source = _ground_truth_source(dataset)
    elif proposal_source is None:
        if getattr(getattr(segmenter, "method", None), "uses_proposals", True):
            raise InputError("this method needs mask proposals; give a proposal source")
    elif isinstance(proposal_source, str):
        raise InputError(f"unknown proposal source '{proposal_source}'")
    groups = dataset.images()[: config.limit]
    missing = dataset.missing_images(groups)
    if missing:
        raise InputError(
            f"{len(missing)} of {len(groups)} images are missing from {config.images_dir}, e.g. {missing[0]}"
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
            folder, config, identity, dataset, groups, segmenter, proposal_source, place, progress,
            stop_after_images, cache, proposal_key,
        )
    return report


def _evaluate_share(
    folder: RunFolder,
    config: EvaluationConfig,
    identity: dict[str, Any],
    dataset: ReferDataset,
    groups: list[ImageGroup],
    segmenter: Any,
    proposal_source: ProposalSource,
    place: Distributed,
    progress: bool,
    stop_after_images: int | None,
    cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None,
) -> dict[str, Any]:
    """This process's images not yet recorded, then (rank 0) the report of every file's records."""
    out_dir = folder.directory
    completed = folder.read_completed()
    expected = {group.image.image_id: group.sentence_count for group in groups}
    for done in completed:
        if expected.get(done.marker["image_done"]) != done.marker["sentences"]:
            raise InputError(
                f"the records in {out_dir} do not match the dataset (image {done.marker['image_done']}); "
                "use another --out or delete that directory"
            )
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
        _RateColumn(),
        TextColumn("{task.fields[sentences]} sentences"),
        TextColumn("oIoU {task.fields[oiou]:.2f}  mIoU {task.fields[miou]:.2f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    description = f"{config.dataset} {config.split}"
    if place.world_size > 1:
        description += f" (rank 0's share of {place.world_size})"
    with Progress(*columns, console=Console(stderr=True), disable=not (progress and place.is_main)) as bar:
        task = bar.add_task(
            description,
            total=len(share),
            completed=len(share) - len(todo),
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
        completed = sorted(read_records(out_dir), key=lambda done: order[done.marker["image_done"]])
        report = _build_report(completed, identity, out_dir, len(groups), place.world_size)
        save_text(json.dumps(report, indent=2) + "\n", out_dir / REPORT_JSON)
        save_text(_report_markdown(report), out_dir / REPORT_MD)
    place.barrier()
    if not place.is_main:
        report = json.loads((out_dir / REPORT_JSON).read_text(encoding="utf-8"))
    return report


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def format_report_table(run_dirs: list[Path]) -> Table:
    """The metrics of finished runs side by side, one column per run directory."""
    reports = []
    for run_dir in run_dirs:
        path = Path(run_dir) / REPORT_JSON
        if not path.is_file():
            raise InputError(
                f"no finished run in {run_dir} ({REPORT_JSON} missing); run the evaluation to the end first"
            )
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path} is not valid JSON: {error}") from None
        try:
            # Every field the table reads, so that a malformed report is named here rather than crash below.
            config, metrics = report["config"], report["metrics"]
            [config[key] for key in ("dataset", "split", "split_by", "overlap")]
            dict(config.get("settings", {}))
            [float(metrics[key]) for key in ("oIoU", "mIoU")]
            [float(metrics["precision"][f"{t:.1f}"]) for t in PRECISION_THRESHOLDS]
            [int(metrics[key]) for key in ("images", "sentences", "no_proposal_sentences")]
            [float(report[key]) for key in ("images_total", "truncated_sentences", "wall_time_s")]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"{path} is not a report of 'globallocal evaluate' (bad or missing {error!s}); rerun the evaluation"
            ) from None
        reports.append(report)

    table = Table(title="Global-Local evaluation")
    table.add_column("")
    for run_dir in run_dirs:
        table.add_column(str(run_dir), justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    configs = [r["config"] for r in reports]
    row("dataset", [f"{c['dataset']} {c['split']} ({c['split_by']})" for c in configs])
    row("overlap", [str(c["overlap"]) for c in configs])
    for key in sorted({key for c in configs for key in c.get("settings", {})}):
        row(key, [_cell(c.get("settings", {}).get(key, "-")) for c in configs])
    table.add_section()
    row("oIoU", [f"{r['metrics']['oIoU']:.2f}" for r in reports])
    row("mIoU", [f"{r['metrics']['mIoU']:.2f}" for r in reports])
    for threshold in (f"{t:.1f}" for t in PRECISION_THRESHOLDS):
        row(f"P@{threshold}", [f"{r['metrics']['precision'][threshold]:.2f}" for r in reports])
    table.add_section()
    row("images", [f"{r['metrics']['images']}/{r['images_total']}" for r in reports])
    row("sentences", [str(r["metrics"]["sentences"]) for r in reports])
    row("no-proposal sentences", [str(r["metrics"]["no_proposal_sentences"]) for r in reports])
    row("truncated sentences", [str(r["truncated_sentences"]) for r in reports])
    row("wall time (s)", [f"{r['wall_time_s']:.1f}" for r in reports])
    return table
