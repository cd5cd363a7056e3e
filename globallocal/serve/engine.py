"""The model side of ``globallocal serve``: one shared segmenter per method, used one request at a time.

Everything here is plain Python (no Gradio), so the page's behaviour can be
tested without a browser. A browser session keeps an :class:`ImageSession`
(the photo's proposals and the method's image features); answering a phrase
or re-ranking under other weights reuses it and never runs the image tower.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..data.bounded import MAX_MEGAPIXELS
from ..data.images import PHOTO_FORMATS, load_image, open_checked
from ..errors import ImageError, InputError
from ..methods import ImageFeatures, MethodSettings, SegmentResult, available_methods
from ..methods.base import stop_on_failure
from ..proposals import Proposals
from ..proposals.concepts import is_phrase_dependent
from ..proposals.files import load_proposals
from ..segmenter import ImageState, Segmenter

UPLOADED_MASKS = "masks"
"""The proposal source name for masks uploaded with the photo."""
PROPOSAL_LABELS = {"freesolo": "FreeSOLO", "sam2": "SAM 2", "sam": "SAM", "sam3": "SAM 3 (per phrase)",
                   UPLOADED_MASKS: "uploaded masks"}


@dataclass
class ImageSession:
    """What one browser session computed for its photo: paid once, reused by every answer."""

    key: tuple
    """What the features depend on: photo file, proposal source, mask files, method."""
    photo_name: str
    method: str
    source: str
    state: ImageState
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of each stage that made the features (decode, proposals, image features)."""


@dataclass
class Answer:
    """The answers to a session's phrases under one set of weights."""

    results: list[SegmentResult]
    settings: MethodSettings
    parts: list[dict[str, torch.Tensor]]
    """Per phrase, named parts of every proposal's score that add up to it (empty when the method has none)."""
    seconds: float
    """Parsing, text encoding and ranking."""


def reranking_weights(settings: MethodSettings, visual_settings: Sequence[str]) -> dict[str, float]:
    """The settings that re-rank without the image: float fields the image features do not depend on."""
    return {
        item.name: getattr(settings, item.name)
        for item in fields(settings)
        if item.name not in visual_settings and isinstance(getattr(settings, item.name), float)
    }


def image_key(photo: str | Path, source: str, mask_files: Sequence[str], method: str) -> tuple:
    """What a photo's features depend on: the file, the proposal source (and its uploaded masks), the method."""
    return str(photo), source, tuple(mask_files) if source == UPLOADED_MASKS else (), method


def _current_state(segmenter: Segmenter) -> ImageState | None:
    try:
        return segmenter.image_state
    except InputError:
        return None


class Engine:
    """The served models, one request at a time, for any number of browser sessions.

    ``load_segmenter(method)`` builds a method's segmenter (called once per
    method, on first use); ``build_generator(kind)`` a proposal source
    (likewise). Every use of a model holds one lock, so two photos never go
    through the model at the same time, whatever the web server does.
    """

    def __init__(
        self,
        load_segmenter: Callable[[str], Segmenter],
        build_generator: Callable[[str], Any],
        default_method: str,
        max_megapixels: float = MAX_MEGAPIXELS,
        allow_no_noun: bool = False,
        methods: Sequence[str] | None = None,
    ) -> None:
        self._load_segmenter = load_segmenter
        self._build_generator = build_generator
        self.default_method = default_method
        self.methods = tuple(methods or available_methods())
        """The methods the page offers (the command line names those the served models can run)."""
        self.max_megapixels = max_megapixels
        self.allow_no_noun = allow_no_noun
        self._segmenters: dict[str, Segmenter] = {}
        self._generators: dict[str, Any] = {}
        self._lock = threading.Lock()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock, torch.inference_mode():
            yield

    # -- models, built on first use and shared -------------------------------

    def segmenter(self, method: str | None = None) -> Segmenter:
        """The shared segmenter of ``method`` (default: the served one), built on first use; a method the page
        does not offer is refused, whatever a request names (it would load models the command did not ask for)."""
        method = method or self.default_method
        if method not in self.methods:
            raise InputError(f"the page does not offer method {method!r}; it offers {', '.join(self.methods)} (to "
                             f"serve another, restart with --method {method})")
        with self._lock:
            if method not in self._segmenters:
                self._segmenters[method] = self._load_segmenter(method)
            return self._segmenters[method]

    def weights(self, method: str | None = None) -> dict[str, float]:
        """The re-ranking weights of a method and their current values."""
        segmenter = self.segmenter(method)
        return reranking_weights(segmenter.settings, segmenter.method.visual_settings)

    # -- inputs --------------------------------------------------------------

    def open_photo(self, path: str | Path) -> Image.Image:
        """Decode an uploaded photo, refusing non-images and photos over the megapixel limit before decoding."""
        path = Path(path)
        try:
            # The shared header check also refuses decompression bombs before anything is decoded.
            with open_checked(path, path.name) as header:
                width, height = header.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ImageError(f"{path.name} is not an image this page can read; upload a {PHOTO_FORMATS} photo") \
                from None
        megapixels = width * height / 1e6
        if megapixels > self.max_megapixels:
            raise ImageError(
                f"{path.name} is {megapixels:.1f} megapixels ({width}x{height}), over this server's limit of "
                f"{self.max_megapixels:g}; downscale it, or restart serve with a higher --max-megapixels"
            )
        try:
            return load_image(path)
        except ImageError:
            raise ImageError(f"{path.name} could not be decoded; is it a complete {PHOTO_FORMATS} file?") from None

    @staticmethod
    def read_masks(files: Sequence[str | Path], size: tuple[int, int]) -> Proposals:
        """Uploaded proposals: one PNG per mask (in upload order), or one COCO-style RLE .json."""
        if not files:
            raise InputError("no mask files were uploaded; add one PNG per mask (or an RLE .json), "
                             "or pick another proposal source")
        if len(files) == 1:
            return load_proposals(files[0], size)
        if any(Path(name).suffix.lower() != ".png" for name in files):
            raise InputError("upload either PNG masks or a single RLE .json, not a mix")
        parts = [load_proposals(name, size) for name in files]
        return Proposals.from_masks(torch.cat([part.masks for part in parts]))

    def _proposals(self, segmenter: Segmenter, source: str, image: Image.Image,
                   mask_files: Sequence[str]) -> Proposals | None:
        """The photo's proposals; None for a phrase-dependent source, which becomes the segmenter's to ask."""
        segmenter.proposal_source = None
        if source == UPLOADED_MASKS:
            return self.read_masks(mask_files, (image.height, image.width))
        if source not in PROPOSAL_LABELS:
            raise InputError(f"unknown proposal source {source!r}; use {', '.join(PROPOSAL_LABELS)}")
        if source not in self._generators:
            self._generators[source] = self._build_generator(source)
        generator = self._generators[source]
        if is_phrase_dependent(generator):
            segmenter.proposal_source = generator
            return None
        return generator.generate(image)

    # -- the two halves of a request ------------------------------------------

    def set_image(
        self, photo: str | Path, source: str, mask_files: Sequence[str] = (), method: str | None = None
    ) -> ImageSession:
        """Decode the photo, make its proposals and run the image tower once; the result is the session's."""
        method = method or self.default_method
        segmenter = self.segmenter(method)
        timings = {}
        start = time.perf_counter()
        image = self.open_photo(photo)
        timings["decode"] = time.perf_counter() - start
        with self._exclusive():
            start = time.perf_counter()
            proposals = self._proposals(segmenter, source, image, mask_files) if segmenter.method.uses_proposals \
                else None
            timings["proposals"] = time.perf_counter() - start
            start = time.perf_counter()
            segmenter.set_image(image, proposals)
            timings["image features"] = time.perf_counter() - start
            state = segmenter.image_state
        key = image_key(photo, source, mask_files, method)
        return ImageSession(key, Path(photo).name, method, source, state, timings)

    def answer(self, session: ImageSession, phrases: Sequence[str], weights: Mapping[str, float]) -> Answer:
        """Answer phrases about a session's photo under ``weights``: text side only, never the image tower."""
        phrases = [phrase.strip() for phrase in phrases if phrase.strip()]
        if not phrases:
            raise InputError("type a phrase describing the object, e.g. \"the man on the right\"")
        segmenter = self.segmenter(session.method)
        with self._exclusive():
            start = time.perf_counter()
            if _current_state(segmenter) is not session.state:  # another session's photo was set since
                segmenter.restore(session.state)
            served = segmenter.settings
            segmenter.settings = replace(served, **weights)
            try:
                results = segmenter.predict_many(phrases, require_noun=not self.allow_no_noun)
                stop_on_failure(results)
                parts = _score_parts(segmenter, results)
                settings = segmenter.settings
            finally:
                segmenter.settings = served
            session.state = segmenter.image_state
            return Answer(results, settings, parts, time.perf_counter() - start)


def _score_parts(segmenter: Segmenter, results: Sequence[SegmentResult]) -> list[dict[str, torch.Tensor]]:
    """The method's parts of each answer's scores, among the proposals it was answered from."""
    state = segmenter.image_state
    if state.concepts is None:
        features = ImageFeatures(state.image, state.proposals, state.tensors)
        return segmenter.method.score_parts(features, [segmenter.parse(r.phrase) for r in results], segmenter.encode)
    parts = []
    for result in results:
        candidates = result.among(None)
        if len(candidates) == 0:
            parts.append({})
            continue
        features = ImageFeatures(state.image, candidates, state.concepts.features(candidates))
        parts.extend(segmenter.method.score_parts(features, [segmenter.parse(result.phrase)], segmenter.encode))
    return parts
