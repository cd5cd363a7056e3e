"""SAM 3's rows for bench/proposals.py and bench/methods.py: the model, the photo's workload, its stages.

SAM 3 is timed in the stages the toolkit pays them: its vision tower once per
photo (``set_image``), then its text encoder and decoder once per batch of
noun phrases (``answer``), then, under a method, the features of the new
masks and the scoring. Without ``--sam3-weights DIR`` the model is the tiny
random SAM 3 of the tests (hidden size 32, 224-pixel input): the rows then
check that every stage runs; they are not SAM 3's cost (the real model has
about 0.85 B parameters at 1008 pixels). Random weights of the real size
would cost what trained ones do; with a snapshot of facebook/sam3 the rows
are the real model's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny_sam3: the tests' tiny random SAM 3

from globallocal.models.text import parse_phrase  # noqa: E402
from globallocal.proposals.concepts import concept_query  # noqa: E402
from globallocal.proposals.sam3 import Sam3ConceptSource  # noqa: E402
from globallocal.proposals.sam3_weights import load_sam3  # noqa: E402

TINY = "tiny random SAM 3 (hidden 32, 224 px): checks the stages run, not SAM 3's cost"


def add_sam3_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sam3-weights", default=None,
                        help="a SAM 3 snapshot folder (default: the tests' tiny random SAM 3)")


def load_source(weights: str | None, device: str, max_proposals: int | None = None
                ) -> tuple[Sam3ConceptSource, str]:
    """SAM 3 in float32 as a concept source (threshold 0: every query kept, the most masks a photo can give, at
    most ``max_proposals`` per prompt) and what it is."""
    if weights is None:
        from tiny_sam3 import save_tiny_sam3

        weights = str(save_tiny_sam3(tempfile.mkdtemp(prefix="bench-sam3-")))
        label = TINY
    else:
        label = f"SAM 3 from {weights}"
    source = Sam3ConceptSource.from_loaded(load_sam3(weights, device), threshold=0.0, max_proposals=max_proposals)
    return source, label


def queries(sentences: Sequence[str], nlp) -> list:
    """The distinct noun-phrase queries of the sentences, as the segmenter asks them (one batch)."""
    return list(dict.fromkeys(concept_query(parse_phrase(sentence, nlp), nlp) for sentence in sentences))


def _timed(fn: Callable[[], object]) -> float:
    import torch

    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def source_stages(source: Sam3ConceptSource, image, asked: Sequence, repeats: int) -> dict[str, float]:
    """Median seconds of the vision pass and of decoding ``asked`` in one batch (a new photo each time, so no
    prompt is answered from the photo's decoded prompts)."""
    encode, decode = [], []
    for _ in range(repeats):
        encode.append(_timed(lambda: source.set_image(image)))
        decode.append(_timed(lambda: source.answer(asked)))
    return {"encode": statistics.median(encode), "decode": statistics.median(decode)}


def method_stages(segmenter, source: Sam3ConceptSource, image, sentences: Sequence[str], repeats: int
                  ) -> dict[str, float]:
    """Median seconds of one photo under a segmenter that asks SAM 3: ``set_image`` (SAM 3's vision pass and
    the method's per-photo work), then ``predict_many`` (decode, new masks' features, scoring); the decode
    alone is timed on the source, so scoring = predict_many - decode."""
    image_s, predict_s = [], []
    for _ in range(repeats):
        image_s.append(_timed(lambda: segmenter.set_image(image)))
        predict_s.append(_timed(lambda: segmenter.predict_many(sentences)))
    decode = source_stages(source, image, queries(sentences, segmenter.nlp), repeats)["decode"]
    predict = statistics.median(predict_s)
    return {"image": statistics.median(image_s), "decode": decode, "scoring": max(predict - decode, 0.0),
            "total": statistics.median(image_s) + predict}


# (method, preset) of each SAM 3 use under a method: SAM 3 alone, and its instances as the candidates.
SAM3_USES = [("sam3", "sam3"), ("global-local", "global-local-sam3"), ("hybridgl", "hybridgl-sam3")]


def method_rows(weights: str | None, device: str, clips: dict, nlp, image, sentences: Sequence[str],
                repeats: int, max_proposals: int | None = None) -> tuple[list[str], list[list[object]], str]:
    """(header, rows, what SAM 3 is) of every SAM 3 use on one photo and its sentences, SAM 3 in float32 and
    CLIP in each precision of ``clips``; threshold 0, so every query of every noun phrase (at most
    ``max_proposals``) is a candidate."""
    from globallocal.methods import build_method
    from globallocal.segmenter import Segmenter

    source, label = load_source(weights, device, max_proposals)
    header = ["method", "preset", "CLIP precision", "image (SAM 3 vision + per-photo)", "decode (one batch)",
              "features + scoring", "total"]
    rows = []
    for method, preset in SAM3_USES:
        for precision, clip in clips.items() if method != "sam3" else [("none", None)]:
            if method == "sam3":
                built = build_method(method, None, nlp, preset, {"source": source}, threshold=0.0)
                segmenter = Segmenter(None, nlp, method=built)
            else:
                segmenter = Segmenter(clip, nlp, proposal_source=source,
                                      method=build_method(method, clip, nlp, preset))
            segmenter.set_image(image)  # warm-up: first-call allocations and kernel choices
            segmenter.predict_many(sentences)
            stages = method_stages(segmenter, source, image, sentences, repeats)
            rows.append([method, preset, precision, *(f"{stages[name]:.2f}" for name in
                                                      ("image", "decode", "scoring", "total"))])
            print("row:", " | ".join(map(str, rows[-1])), flush=True)
    return header, rows, label
