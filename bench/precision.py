"""How far the half precisions move each method's answers from float32's, on fixed inputs.

    python bench/precision.py [--device cpu] [--precisions fp32,bf16] [--quick]

The inputs: seeded random weights (the same in every precision: the float32
model's weights cast), the example photos, 30 random blob proposals each
(examples' sizes), and 9 sentences (3 refs x 3). For each method and each
half precision, against float32:
  max rel. score diff: max over sentences of max |s - s32| / max |s32|, over
    the proposals' scores (TCL: over its soft mask's pixels);
  answers changed: the share of sentences whose chosen proposal differs
    (TCL: whose thresholded mask differs at any pixel; its mean IoU to the
    float32 mask is given too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, add_options, load_average, markdown, precisions  # noqa: E402
from segment import blob_masks  # noqa: E402

sys.path.insert(0, str(REPO))

from globallocal import Segmenter  # noqa: E402
from globallocal.data.images import load_image  # noqa: E402
from globallocal.methods import build_method, get_method  # noqa: E402
from globallocal.models.clip import load_clip  # noqa: E402
from globallocal.models.text import load_parser  # noqa: E402
from globallocal.proposals import Proposals  # noqa: E402

PHOTOS = [REPO / "examples" / "img_80472.jpg", REPO / "examples" / "img_44266.jpg"]
SENTENCES = [
    "the man on the right", "right guy", "man behind the car",
    "the woman holding an umbrella", "lady left", "woman with a red bag",
    "a wooden chair near the table", "the smallest chair", "chair in the middle",
]
# (label, method, preset, CLIP architecture)
METHODS = [
    ("global-local RN50", "global-local", "paper", "RN50"),
    ("global-local ViT-B-32", "global-local", "paper", "ViT-B-32"),
    ("hybridgl ViT-B-16", "hybridgl", "hybridgl-paper", "ViT-B-16-quickgelu"),
    ("tcl ViT-B-16", "tcl", None, "ViT-B-16-quickgelu"),
]


def _random_tcl(clip, nlp, preset):
    from globallocal.methods.tcl import TCLHead
    from globallocal.methods.tcl.method import TCL

    torch.manual_seed(1)
    head = TCLHead(**TCLHead.dims_for(clip))
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return TCL(clip, nlp, get_method("tcl").settings(preset), head, {"file": "random"})


def segmenters(method: str, preset: str | None, model: str, chosen: list[str], device: str, nlp) -> dict:
    """One segmenter per precision, all with the float32 model's (seeded random) weights."""
    built = {}
    reference = None
    for precision in chosen:
        torch.manual_seed(0)
        clip = load_clip(model, "random", device=device, precision=precision)
        if reference is None:
            reference = clip.model.state_dict()
        else:
            clip.model.load_state_dict(reference)  # cast on load: the float32 weights, rounded
        scorer = _random_tcl(clip, nlp, preset) if method == "tcl" else build_method(method, clip, nlp, preset)
        built[precision] = Segmenter(clip, nlp, method=scorer)
    return built


def answers(segmenter: Segmenter, photos, counts: int, sentences: list[str]) -> list:
    results = []
    for path in photos:
        photo = load_image(path)
        proposals = Proposals.from_masks(blob_masks(counts, photo.height, photo.width))
        segmenter.set_image(photo, proposals if segmenter.method.uses_proposals else None)
        results += segmenter.predict_many(sentences)
    return results


def compared(reference: list, other: list) -> tuple[float, float, str]:
    """Max relative score difference, share of answers changed, and (TCL) the mean IoU of the masks."""
    soft = hasattr(reference[0], "soft_mask")
    values = [(r.soft_mask, o.soft_mask) if soft else (r.scores, o.scores) for r, o in zip(reference, other)]
    relative = max(float((o.float() - r).abs().max() / r.abs().max().clamp_min(1e-12)) for r, o in values)
    if soft:
        changed = [not torch.equal(r.mask, o.mask) for r, o in zip(reference, other)]
        ious = [float((r.mask & o.mask).sum() / (r.mask | o.mask).sum().clamp_min(1)) for r, o in zip(reference, other)]
        iou = f"{sum(ious) / len(ious):.4f}"
    else:
        changed = [r.index != o.index for r, o in zip(reference, other)]
        iou = ""
    return relative, sum(changed) / len(changed), iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args()
    chosen = precisions(args)
    nlp = load_parser()
    photos, sentences, count = (PHOTOS[:1], SENTENCES[:3], 10) if args.quick else (PHOTOS, SENTENCES, 30)
    rows = []
    for label, method, preset, model in METHODS[1:] if args.quick else METHODS:
        built = segmenters(method, preset, model, chosen, args.device, nlp)
        results = {precision: answers(segmenter, photos, count, sentences) for precision, segmenter in built.items()}
        for precision in chosen[1:]:
            relative, changed, iou = compared(results["fp32"], results[precision])
            rows.append([label, precision, f"{relative:.2e}", f"{100 * changed:.0f}% of {len(results['fp32'])}", iou])
            print(f"row: {label} {precision}: max rel. diff {relative:.2e}, answers changed {100 * changed:.0f}%",
                  flush=True)
    print(f"\n{len(photos)} photos x {len(sentences)} sentences, {count} blob proposals, random weights, "
          f"{args.device}; {load_average()}\n")
    print(markdown(["method", "precision", "max rel. score diff vs fp32", "answers changed",
                    "mean IoU to fp32 (TCL)"], rows))


if __name__ == "__main__":
    main()
