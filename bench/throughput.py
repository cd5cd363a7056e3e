"""Evaluation throughput: the reference's structure against globallocal's, side by side.

    python bench/throughput.py [--images 2] [--models RN50,ViT-B-32] [--proposals 30,100]

Same inputs and same random weights for both:
  (a) reference-structured, written here as the published code runs: for every
      ref, proposals and visual features are recomputed; each proposal's masked
      full-size image is built before cropping; crops are encoded in one batch,
      float32, autograd on; per sentence spaCy runs twice (expression, then its
      noun phrase) and the two texts are encoded one at a time. Its components
      are the published code's: open_clip's model as loaded (batch norm
      separate, contiguous tensors), CLIP's attention pool once per mask, the
      full 77-token text context, and FreeSOLO run as the authors' code runs it
      (bench/freesolo.py's reference style: every candidate at once, one IoU
      matrix, embedding head computed);
  (b) globallocal: per image, proposals and visual features once, shared by all
      refs and sentences, inference mode, chunked crops, text batched and cached.
Workload: 480x640 photos, 3 refs per image, 3 sentences per ref. "full" rows
take proposals from FreeSOLO (random ResNet-101 weights, category bias raised
so it yields its cap); "scoring only" rows take random blobs, so they time the
global-local scoring alone. Each (pipeline, workload) runs in its own process
so peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SENTENCES = [
    ["the man on the right", "right guy", "man in a blue shirt"],
    ["the woman holding an umbrella", "lady left", "woman with a red bag"],
    ["a wooden chair near the table", "empty chair", "chair closest to you"],
]


def _photos(count: int):
    from PIL import Image

    from globallocal.data.images import load_image

    sources = [REPO / "examples" / "img_80472.jpg", REPO / "examples" / "img_44266.jpg"]
    photos = []
    for i in range(count):
        photo = load_image(sources[i % len(sources)]).resize((640, 480), Image.BILINEAR)
        photos.append(photo if i < len(sources) else photo.rotate(180))
    return photos


def _reference_freesolo(count: int):
    """FreeSOLO as the authors' code runs it (same random weights as ``_proposal_source``)."""
    import torch
    from freesolo import reference_style_heads, reference_style_postprocess  # bench/freesolo.py

    from globallocal.data.images import x800
    from globallocal.proposals import Proposals
    from globallocal.proposals.freesolo import FreeSOLOGenerator
    from globallocal.proposals.solov2 import FreeSOLONet

    torch.manual_seed(0)
    net = FreeSOLONet().eval()
    with torch.no_grad():
        net.ins_head.cate_pred.bias.fill_(4.0)
    padding = FreeSOLOGenerator(net)

    def propose(image):
        # Without autograd: with it, the ResNet-101 graph at 800x1088 plus every candidate mask held at once
        # exhaust this machine's 24 GB. Autograd stays on for the CLIP part, as the published code runs it.
        with torch.no_grad():
            tensor = x800(image)
            features = net.features(padding.prepare(tensor).contiguous())
            heads = reference_style_heads(net, features)
            size = (image.height, image.width)
            masks, scores = reference_style_postprocess(heads, tuple(tensor.shape[-2:]), size)
        return Proposals.from_masks(masks[:count], scores[:count])

    return propose


def _reference_clip(name: str):
    """open_clip's model as the published code holds it: same random weights as load_clip's, nothing folded."""
    import open_clip
    import torch

    from globallocal.models.clip import ClipBundle, image_tower_family

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**open_clip.get_model_config(name)).eval()
    family = image_tower_family(open_clip.get_model_config(name))
    return ClipBundle(model, open_clip.tokenizer.SimpleTokenizer(), name, "random", family, 77)


def _proposal_source(kind: str, count: int):
    """FreeSOLO with random weights capped at ``count`` masks, or ``count`` random blobs (no proposal cost)."""
    import torch

    from globallocal.proposals import Proposals
    from globallocal.proposals.freesolo import FreeSOLOGenerator
    from globallocal.proposals.solov2 import FreeSOLONet

    if kind == "blobs":
        from segment import blob_masks  # bench/segment.py

        return lambda image: Proposals.from_masks(blob_masks(count, image.height, image.width))
    torch.manual_seed(0)
    net = FreeSOLONet().eval().requires_grad_(False)
    with torch.no_grad():
        net.ins_head.cate_pred.bias.fill_(4.0)
    # What load_freesolo hands the generator: batch norm folded, channels-last.
    net = net.fold_frozen_batchnorm().to(memory_format=torch.channels_last)
    generator = FreeSOLOGenerator(net, max_proposals=count)
    return generator.generate


def reference_structured(clip, nlp, photos, propose, settings) -> int:
    """The published code's structure; returns the number of sentences answered."""
    import torch
    import torch.nn.functional as F

    from globallocal.data.images import x800
    from globallocal.methods.global_local.visual import (
        crop_boxes,
        resnet_feature_map,
        vit_global_features,
    )
    from globallocal.models.text import noun_phrase_of
    from globallocal.models.vit import resize, soft_masks

    fill = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    answered = 0
    for photo in photos:
        for ref_sentences in SENTENCES:  # the reference's dataset yields refs, not images
            with torch.enable_grad():
                proposals = propose(photo)
                shared = x800(photo)
                original = resize(shared, (photo.height, photo.width))
                small = resize(shared, (clip.image_size, clip.image_size))[None]
                crops = []
                for mask, (x0, y0, x1, y1) in zip(
                    proposals.masks, crop_boxes(proposals.boxes, photo.height, photo.width)
                ):
                    masked = original * mask + (~mask) * fill  # a full-size image per proposal
                    crops.append(resize(masked[:, y0:y1, x0:x1], (clip.image_size, clip.image_size)))
                if clip.family == "resnet":
                    feature_map = F.normalize(resnet_feature_map(clip, small), dim=1)
                    weights = soft_masks(proposals.masks, feature_map.shape[-1])
                    global_features = clip.visual.attnpool(feature_map * weights[:, None])  # one pass per mask
                    local = F.normalize(clip.model.encode_image(torch.stack(crops)), dim=-1)
                else:
                    global_features = vit_global_features(clip, small, proposals.masks, chunk_size=10_000)
                    local = clip.model.encode_image(torch.stack(crops))
                visual = settings.alpha * global_features + (1 - settings.alpha) * local
                for sentence in ref_sentences:
                    expression = " ".join(t.text for t in nlp(sentence.lower()) if t.text != " ")
                    noun_phrase, _ = noun_phrase_of(nlp(expression))
                    t_global = clip.model.encode_text(clip.tokenizer([expression]))
                    t_local = clip.model.encode_text(clip.tokenizer([noun_phrase]))
                    if clip.family == "resnet":
                        text = settings.beta * F.normalize(t_global) + (1 - settings.beta) * F.normalize(t_local)
                        scores = visual @ text.T
                    else:
                        text = settings.beta * t_global + (1 - settings.beta) * t_local
                        scores = F.normalize(visual) @ F.normalize(text).T
                    int(scores.argmax())
                    answered += 1
    return answered


def globallocal_path(clip, nlp, photos, propose, settings) -> int:
    from globallocal.segmenter import Segmenter

    segmenter = Segmenter(clip, nlp, settings)
    answered = 0
    for photo in photos:
        segmenter.set_image(photo, propose(photo))
        for ref_sentences in SENTENCES:
            answered += len(segmenter.predict_many(ref_sentences))
    return answered


def run_one(pipeline: str, model: str, source: str, proposals: int, images: int) -> dict:
    import torch

    from globallocal.methods import get_method
    from globallocal.models.clip import load_clip
    from globallocal.models.text import load_parser

    torch.manual_seed(0)
    nlp = load_parser()
    photos = _photos(images)
    if pipeline == "reference":
        clip = _reference_clip(model)
        propose = _reference_freesolo(proposals) if source == "freesolo" else _proposal_source(source, proposals)
    else:
        clip = load_clip(model, "random")
        propose = _proposal_source(source, proposals)
    settings = get_method("global-local").settings("paper")
    function = reference_structured if pipeline == "reference" else globallocal_path
    function(clip, nlp, photos[:1], propose, settings)  # warm-up: first-call allocations, lazy init
    start = time.perf_counter()
    answered = function(clip, nlp, photos, propose, settings)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sentences": answered, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--models", default="RN50,ViT-B-32")
    parser.add_argument("--proposals", default="30,100")
    parser.add_argument(
        "--sources", default="freesolo,blobs",
        help="freesolo: the full pipeline; blobs: given masks, i.e. scoring only",
    )
    parser.add_argument("--child", nargs=4, metavar=("PIPELINE", "MODEL", "SOURCE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pipeline, model, source, proposals = args.child
        print(json.dumps(run_one(pipeline, model, source, int(proposals), args.images)))
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Evaluation throughput, {args.images} images x 3 refs x 3 sentences, 480x640, CPU, "
        f"{torch.get_num_threads()} threads"
    )
    for column in ("model", "proposals", "pipeline", "reference sent/s", "globallocal sent/s", "ratio",
                   "reference peak MB", "globallocal peak MB"):
        table.add_column(column, justify="right")
    lines = []
    labels = {"freesolo": "full (FreeSOLO)", "blobs": "scoring only"}
    for source in args.sources.split(","):
        for model in args.models.split(","):
            for proposals in args.proposals.split(","):
                results = {}
                for pipeline in ("reference", "globallocal"):
                    command = [sys.executable, __file__, "--images", str(args.images), "--child", pipeline, model,
                               source, proposals]
                    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                    results[pipeline] = json.loads(output.strip().splitlines()[-1])
                ref, ours = results["reference"], results["globallocal"]
                ref_rate, our_rate = ref["sentences"] / ref["seconds"], ours["sentences"] / ours["seconds"]
                ratio = our_rate / ref_rate
                table.add_row(model, proposals, labels[source], f"{ref_rate:.2f}", f"{our_rate:.2f}",
                              f"{ratio:.1f}x", f"{ref['peak_mb']:.0f}", f"{ours['peak_mb']:.0f}")
                lines.append(f"{labels[source]}, {model}, {proposals} proposals: ratio {ratio:.1f}x")
    Console().print(table)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
