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
:mod:`globallocal.runs.sweep` does with the features of a ``cache``
(:class:`~globallocal.runs.cache.FeatureCache`). With a cache the image's
proposals and features, and the text features, are read from it when present
and written to it otherwise; the records are identical either way.

Under torchrun (``distributed``) the images are dealt round-robin to the
processes; each appends to its own ``records.rank<R>.jsonl`` with the same
resume logic, reads the others' files to skip what any session finished, and
rank 0 merges all files into the report. A run may be resumed with another
number of processes. With ``ray`` the images go to a pool of Ray actors
instead (:mod:`~globallocal.runs.ray_engine`), and this one process writes.

Without a cache the segmenter is duck-typed (``set_image(image, proposals)``
and ``predict(phrase)`` returning an object with ``mask``, ``index``,
``scores``, ``noun_phrase``, ``expression`` and ``truncated``); with one it
must be a :class:`~globallocal.Segmenter`. The proposal source is any
callable ``(image, record) -> Proposals``.
"""


from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..data.bounded import json_text, read_json
from ..data.datasets import EvaluationDataset, open_dataset
from ..data.images import remove_write_orphans, save_text
from ..data.refer import ImageGroup, ImageRecord
from ..errors import InputError
from ..models.weights import weights_change
from ..plurals import counted
from ..proposals import Proposals
from .benchmark_metrics import MetricFamily, Tally, family_of
from .cache import FeatureCache
from .distributed import Distributed
from .evaluation_config import EvaluationConfig, check_evaluation_inputs, run_identity
from .evaluation_records import IMAGE_UNITS, CompletedImage, add_record, read_records, referent
from .evaluation_report import REPORT_JSON, REPORT_MD, answer_kind, build_report, report_markdown
from .evaluation_step import EvaluationStep, ProposalSource, per_image
from .metrics import format_metric
from .progress import LoggedProgress, RateColumn, RemainingColumn
from .runfolder import (
    CONFIG_FILE,
    RECORDS_FILE,
    RunFolder,
    UnitResult,
    is_retry,
    records_file,
)

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


class EvaluationStopped(KeyboardInterrupt):
    """Raised by the ``stop_after_images`` hook; behaves like Ctrl-C for callers."""


def _ground_truth_source(dataset: EvaluationDataset) -> ProposalSource:
    def source(image: Image.Image, record: ImageRecord) -> Proposals:
        return Proposals.from_arrays(dataset.instance_masks(record.image_id))

    return source


def _open(config: EvaluationConfig, split_by: str) -> EvaluationDataset:
    return open_dataset(
        config.dataset, config.split, config.data_root, split_by=split_by, images_dir=config.images_dir,
        overlap=config.overlap, subset=config.subset,
    )


def _actor_step(
    config: EvaluationConfig, split_by: str, save_masks: bool, cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None, worker: Any,
) -> EvaluationStep:
    """A Ray actor's step, from the worker it built: it opens the dataset itself."""
    dataset = _open(config, split_by)
    source = _ground_truth_source(dataset) if worker.source == "gt" else None
    if worker.image_source() is not None:
        source = per_image(worker.image_source())
    return EvaluationStep(dataset, worker.segmenter, source, save_masks, cache, proposal_key)


def _absent(dataset: EvaluationDataset, groups: list[ImageGroup]) -> list[ImageGroup]:
    """The groups whose photo is missing, where the dataset leaves such photos out (others stop the run first)."""
    if not dataset.skips_missing_photos:
        return []
    return [group for group in groups if dataset.missing_images([group])]


def _missing_photos(dataset: EvaluationDataset, absent: list[ImageGroup]) -> dict[str, Any] | None:
    """What the report says of the photos left out (None for a dataset where a missing photo stops the run)."""
    if not dataset.skips_missing_photos:
        return None
    first = str(dataset.missing_images(absent[:1])[0]) if absent else None
    return {"images": len(absent), "sentences": sum(group.sentence_count for group in absent), "first": first}


def _scores(family: MetricFamily, running: Tally) -> str:
    """The running metrics the progress bar shows ("oIoU 24.83  mIoU 26.23")."""
    return "  ".join(f"{name} {format_metric(value)}" for name, value in family.headline_values(running).items())


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
    ray: Any = None,
    recipe: Any = None,
) -> dict[str, Any]:
    """Evaluate a split, resuming from ``config.out_dir`` if it holds a run of the same config.

    ``proposal_source`` is a callable ``(image, record) -> Proposals``,
    ``"gt"``: the image's ground-truth instance masks from instances.json
    (the oracle setting papers report as an upper bound), or None for a
    method that draws its own mask (``method.uses_proposals`` false) and
    for a segmenter whose own source proposes per sentence
    (``segmenter.phrase_dependent``, SAM 3; ``proposal_key`` is then its
    key, and each sentence's candidates are cached under it and the query).

    ``cache``: read and write proposals and features there (the segmenter
    must then be a :class:`~globallocal.Segmenter`). ``proposal_key``: the
    source's cache key (:func:`~globallocal.proposals.sources.proposal_source_key`), for
    a deterministic source worth caching; without one the source is called
    for every image and the cache entry is found by the proposals' content.

    ``distributed``: this process's place under torchrun; every process must
    call this with the same arguments. Only rank 0 shows progress.

    ``ray``: an entered :class:`~globallocal.runs.ray_engine.RayRun`; the
    images then go to its actors, each building its worker from ``recipe``
    (as :func:`~globallocal.runs.batch.run_batch` does) and opening the
    dataset itself; this process only writes and reports.

    Returns the report (also written to report.json / report.md).
    ``stop_after_images`` raises :class:`EvaluationStopped` once that many
    images have been completed in this call and more remain, leaving the out
    dir exactly as an interruption would (used to test resuming).
    """
    place = distributed or Distributed()
    if place.is_main:
        check_evaluation_inputs(config, main=True)
    identity = run_identity(config, segmenter, cache, proposal_key)
    dataset = _open(config, identity["split_by"])
    if proposal_source == "gt":
        proposal_source = _ground_truth_source(dataset)
    elif ray is not None:
        pass  # the actors' own
    elif proposal_source is None:
        # A phrase-dependent segmenter asks its own source per sentence.
        if getattr(getattr(segmenter, "method", None), "uses_proposals", True) and not getattr(
            segmenter, "phrase_dependent", False
        ):
            raise InputError("this method needs mask proposals; give a proposal source")
    elif isinstance(proposal_source, str):
        raise InputError(f"unknown proposal source '{proposal_source}'")
    every_group = dataset.images()
    groups = every_group[: config.limit]
    missing = dataset.missing_images(groups)
    if missing and not dataset.skips_missing_photos:
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
            masks = config.mask_folder()
            if masks is not None and masks.is_dir():
                remove_write_orphans(masks)  # a --save-masks DIR beside the run folder: this run's to write
            if cache is not None:
                cache.prepare()
        place.barrier()
        if not place.is_main:
            folder.check_config(identity, explain=explain)
        folder.open_records()
        step = EvaluationStep(dataset, segmenter, proposal_source, config.mask_format, cache, proposal_key)
        if ray is not None:
            from .ray_engine import StepRecipe

            make = functools.partial(_actor_step, config, identity["split_by"], step.save_masks, cache, proposal_key)
            step = StepRecipe(recipe, make, identity)
        answers = answer_kind(identity.get("settings", {}), getattr(segmenter, "phrase_dependent", False))
        report = _evaluate_share(
            folder, config, identity, dataset, groups, every_group, step, ray, place, progress, stop_after_images,
            answers,
        )
    return report


def _evaluate_share(
    folder: RunFolder,
    config: EvaluationConfig,
    identity: dict[str, Any],
    dataset: EvaluationDataset,
    groups: list[ImageGroup],
    every_group: list[ImageGroup],
    step: Any,
    ray: Any,
    place: Distributed,
    progress: bool,
    stop_after_images: int | None,
    answers: str | None,
) -> dict[str, Any]:
    """This process's images not yet recorded, then (rank 0) the report of every file's records.

    ``groups`` are the images to evaluate (the first ``limit``), ``every_group`` the split's: images past the
    limit may be recorded by an earlier run with a larger one; they are kept, not reported. ``step``: an
    :class:`EvaluationStep`, or with ``ray`` the :class:`~globallocal.runs.ray_engine.StepRecipe` of its actors.
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
    # An image recorded with answers to ask again (an endpoint did not answer) is done again, and replaces it.
    completed = [done for done in completed if done.marker["image_done"] in in_limit and not is_retry(done)]
    done_ids = {done.marker["image_done"] for done in completed}
    # A missing photo (where the dataset allows it) is left out and counted; a later run evaluates it once it is
    # there. Every process finds the same, so the shares still partition the images.
    absent = _absent(dataset, [group for group in groups if group.image.image_id not in done_ids])
    absent_ids = {group.image.image_id for group in absent}
    share = place.shard([group for group in groups if group.image.image_id not in absent_ids])
    todo = [group for group in share if group.image.image_id not in done_ids]
    if absent and progress and place.is_main:
        Console(stderr=True).print(
            f"{len(absent)} of {len(groups)} photos are missing (e.g. {dataset.missing_images(absent[:1])[0]}); "
            "their sentences are left out of the metrics and counted in the report")
    if ray is None:
        finished: Iterator[UnitResult] = (step(group) for group in todo)
    else:
        finished = ray.results(step, [(group.image.image_id, group) for group in todo])

    family = family_of(config.dataset)
    running = family.make()
    for done in completed:
        for record in done.records:
            add_record(running, record)

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[sentences]}"),
        TextColumn("{task.fields[scores]}"),
        TimeElapsedColumn(),
        RemainingColumn(),
    )
    description = f"evaluate {config.dataset} {config.split}"
    if place.world_size > 1:
        description += f" (rank 0's share of {place.world_size})"
    console = Console(stderr=True)
    if progress and place.is_main and len(share) > len(todo):
        console.print(f"resuming: {len(share) - len(todo)} of {counted(len(share), 'image')} done")
    with LoggedProgress(*columns, console=console, unit="images", disable=not (progress and place.is_main)) as bar:
        task = bar.add_task(
            description,
            total=len(share),
            completed=len(share) - len(todo),
            resumed_at=len(share) - len(todo),
            sentences=counted(running.sentences, "sentence"),
            scores=_scores(family, running),
        )
        for count, result in enumerate(finished, start=1):
            for record in result.records:
                add_record(running, record)
            folder.record(result, config.mask_folder())
            bar.update(task, advance=1, sentences=counted(running.sentences, "sentence"),
                       scores=_scores(family, running))
            if stop_after_images is not None and count >= stop_after_images and count < len(todo):
                raise EvaluationStopped(f"stopped after {counted(count, 'image')}")

    # Every process has recorded its share before rank 0 reads them all.
    place.barrier()
    if place.is_main:
        order = {group.image.image_id: index for index, group in enumerate(groups)}
        completed = sorted(
            (done for done in read_records(out_dir) if done.marker["image_done"] in order),
            key=lambda done: order[done.marker["image_done"]],
        )
        report = build_report(completed, identity, out_dir, len(groups), place.world_size, dataset.report_notes(),
                              split_images=len(every_group), limit=config.limit,
                              missing=_missing_photos(dataset, absent), answers=answers)
        save_text(json_text(report, indent=2) + "\n", out_dir / REPORT_JSON)
        save_text(report_markdown(report), out_dir / REPORT_MD)
    place.barrier()
    if not place.is_main:
        report = read_json(out_dir / REPORT_JSON, what="report")
    return report
