"""One image of an evaluation: its proposals and features (from the cache when it has them), then
every sentence answered and recorded.

:class:`EvaluationStep` is the one home of that rule: the evaluation loop and
each Ray actor (:mod:`~globallocal.runs.ray_engine`) call it, and it returns
what the run folder writes (records, with --save-masks each mask as RLE or PNG bytes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.coco_masks import mask_rle
from ..data.datasets import EvaluationDataset
from ..data.images import mask_png_bytes
from ..data.refer import ImageGroup, ImageRecord, Sentence
from ..errors import GlobalLocalError, InputError
from ..models.text import encode_texts
from ..proposals import Proposals
from .cache import FeatureCache, TextStore, image_digest, proposals_digest
from .concept_entries import ConceptEntries
from .metrics import mask_counts, sentence_iou
from .runfolder import UnitResult

ProposalSource = Callable[[Image.Image, ImageRecord], Proposals]


def per_image(generate: Callable[[Image.Image], Proposals]) -> ProposalSource:
    """An evaluation's proposal source from a generator's ``generate`` (which needs only the image)."""

    def source(image: Image.Image, record: ImageRecord) -> Proposals:
        return generate(image)

    return source


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
    expected = {"shapes": segmenter.method.feature_shapes, "image_size": (record.height, record.width)}
    if proposal_key is not None:
        name = cache.entry_name(record.image_id, pixels, proposal_key)
        entry = cache.visual.load(name, **expected)
    if entry is not None:
        proposals = entry.proposals()
    else:
        proposals = proposal_source(image, record)
        if proposal_key is None:
            name = cache.entry_name(record.image_id, pixels, {"content": proposals_digest(proposals)})
            entry = cache.visual.load(name, **expected)
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
    found = texts.load(strings, segmenter.clip.embed_dim)
    for text in strings:
        if text not in found:
            found[text] = encode_texts([text], segmenter.clip)[0].cpu()
            texts.save(text, found[text])
    segmenter.add_text_features(strings, torch.stack([found[text] for text in strings]))


def _set_concept_image(
    image: Image.Image, group: ImageGroup, segmenter: Any, cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None,
) -> ConceptEntries | None:
    """The segmenter set on an image whose candidates come per sentence; with a cache, every query it holds given
    to the segmenter (the image is then paid for only if some query is not cached)."""
    segmenter.set_image(image, lazy=cache is not None)
    if cache is None:
        return None
    if proposal_key is None:
        raise InputError("a phrase-dependent proposal source needs its cache key (proposal_key) to use a cache")
    entries = ConceptEntries(cache, proposal_key, group.image.image_id, image)
    entries.seed(segmenter, [segmenter.concept_query(s.raw) for ref in group.refs for s in ref.sentences])
    return entries


def _overlaps(proposals: Proposals | None, gt: np.ndarray) -> list[int] | None:
    """|proposal AND gt| for every proposal: enough to score any choice later (U = area + |gt| - I)."""
    return None if proposals is None else np.count_nonzero(proposals.masks.numpy()[:, gt], axis=1).tolist()


def evaluate_image(
    group: ImageGroup,
    dataset: EvaluationDataset,
    segmenter: Any,
    proposal_source: ProposalSource | None,
    save_masks: str | None,
    cache: FeatureCache | None,
    proposal_key: dict[str, Any] | None,
) -> tuple[list[dict[str, Any]], str | None, dict[str, bytes]]:
    """The records of every sentence on one image (proposals and features paid once), its cache entry, and
    (``save_masks`` png) each sentence's predicted mask as PNG bytes by file name; with ``save_masks`` rle the
    mask is in the record instead.

    With a phrase-dependent segmenter (and no ``proposal_source``) each sentence is answered among its own
    candidates: its record holds their overlaps, the step that found them and its cache entry; a sentence
    with none is scored as an image without proposals is. Whatever the method, its answer reaches the metrics
    as the one predicted mask (empty: it answered that nothing is there).
    """
    image = dataset.load_image(group.image)
    entries = None
    if proposal_source is None and getattr(segmenter, "phrase_dependent", False):
        proposals, entry = None, None
        entries = _set_concept_image(image, group, segmenter, cache, proposal_key)
    else:
        proposals, entry = _set_image(image, group.image, segmenter, proposal_source, cache, proposal_key)
    answerable = proposals is None or len(proposals) > 0
    records = []
    files: dict[str, bytes] = {}
    for ref in group.refs:
        gt, ignore = dataset.gt_mask(ref), dataset.ignore_mask(ref)
        image_overlaps = _overlaps(proposals, gt)
        for sentence in ref.sentences:
            record: dict[str, Any] = {
                "image_id": group.image.image_id,
                **dataset.sentence_fields(ref, sentence),
                "phrase": sentence.raw,
            }
            result = None
            if answerable:
                with _about(dataset.sentence_label(ref, sentence), sentence):
                    if cache is not None:
                        _seed_text_features(segmenter, cache.text, sentence.raw)
                    result = segmenter.predict(sentence.raw)
                    if entries is not None:
                        record["cache_entry"] = entries.store(segmenter, segmenter.concept_query(sentence.raw))
            candidates = proposals if result is None else result.among(proposals)
            overlaps = image_overlaps if candidates is proposals else _overlaps(candidates, gt)
            answered = result is not None and (candidates is None or len(candidates) > 0)
            if answered:
                pred = result.mask
                record.update(
                    index=result.index,
                    score=result.score,
                    noun_phrase=result.noun_phrase,
                    expression=result.expression,
                    truncated=bool(result.truncated),
                    **result.record_fields(),
                )
                # Further answers of the method (HybridGL's "pure" one), each scored as the main answer is.
                others = {
                    name: {"index": int(index), **_scored(mask_counts(candidates.masks[index], gt, ignore))}
                    for name, index in result.other_answers().items()
                }
                if others:
                    record["other_answers"] = others
            else:
                # No proposal to choose: an empty prediction, scored (never skipped).
                pred = None
                record.update(index=None, score=None, noun_phrase=None, expression=None, truncated=False)
            counts = mask_counts(pred, gt, ignore)
            if result is not None:
                # Phrase-dependent: the source's scores and step; a VLM's outcome, with or without candidates.
                record.update(**result.candidate_fields(aliases=True), **result.answer_fields())
                if result.failure() is not None:  # recorded as answered, and asked again on a resume
                    record["retry"] = True
            record.update(
                **_scored(counts),
                IoU=sentence_iou(counts["I"], counts["U"]),
                no_proposals=not answered,
                gt_area=counts["gt_area"],
                overlaps=overlaps,
            )
            if save_masks == "rle":
                record["mask"] = mask_rle(np.zeros_like(gt) if pred is None else pred)
            elif save_masks is not None:
                files[dataset.mask_name(ref, sentence)] = mask_png_bytes(np.zeros_like(gt) if pred is None else pred)
            records.append(record)
    return records, entry, files


def _scored(counts: dict[str, int]) -> dict[str, int]:
    """What a record keeps of an answer's counts: I, U and the predicted area."""
    return {key: counts[key] for key in ("I", "U", "pred_area")}


@dataclass
class EvaluationStep:
    """One image of a split, as the run folder records it (``save_masks``: rle or png, also keep the masks)."""

    dataset: EvaluationDataset
    segmenter: Any
    proposal_source: ProposalSource | None
    save_masks: str | None
    cache: FeatureCache | None = None
    proposal_key: dict[str, Any] | None = None

    def __call__(self, group: ImageGroup) -> UnitResult:
        started = time.perf_counter()
        records, entry, files = evaluate_image(
            group, self.dataset, self.segmenter, self.proposal_source, self.save_masks, self.cache, self.proposal_key
        )
        marker: dict[str, Any] = {"image_done": group.image.image_id, "seconds": time.perf_counter() - started}
        if entry is not None:
            marker["cache_entry"] = entry
        if any(record.get("retry") for record in records):
            marker["retry"] = True  # an endpoint did not answer: a resume does this image again
        return UnitResult(group.image.image_id, records, marker, files)

    def crashed(self, group: ImageGroup, reason: str) -> UnitResult:
        """An evaluation records every image or stops: the run stops, naming the image."""
        raise InputError(f"image {group.image.image_id} ({group.image.file_name}): {reason}")
