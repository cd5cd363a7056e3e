"""Evaluation throughput: the reference's structure against globallocal's, side by side.

    python bench/throughput.py [--images 2] [--models RN50,ViT-B-32] [--proposals 30,100]
                               [--device cpu] [--precisions fp32,bf16] [--quick]

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
global-local scoring alone. Each (pipeline, workload, precision) runs in its
own process so peak memory (max RSS; on CUDA the allocator's peak) is its own.
The reference runs in float32, as published; globallocal in every precision
asked, each with its ratio to the reference. Before a reference row starts,
its memory need is fitted to two small probe runs: a row that would not fit
the memory free then runs at the largest proposal count that fits, and the
table says so. "CLIP stage" is the dominant stage (the image features of all
proposals: global and local passes) as a share of the device's matmul peak
in that precision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import (  # noqa: E402
    GB,
    LinearNeed,
    add_options,
    child,
    device_name,
    fitting,
    load_average,
    markdown,
    preamble,
    precisions,
    share,
)

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


def rate(result: dict) -> str:
    return f"{result['sentences'] / result['seconds']:.2f}" if "seconds" in result else "failed"


def ratio_of(ours: dict, reference: dict) -> str:
    if "seconds" not in ours or "seconds" not in reference:
        return ""
    return f"{reference['seconds'] / reference['sentences'] * ours['sentences'] / ours['seconds']:.1f}x"


def gigabytes(result: dict) -> str:
    return f"{result['peak_bytes'] / GB:.1f}" if "peak_bytes" in result else ""


def _reference_freesolo(count: int, device: str):
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
    net.to(device)
    padding = FreeSOLOGenerator(net)

    def propose(image):
        # Without autograd: with it, the ResNet-101 graph at 800x1088 plus every candidate mask held at once
        # exhaust this machine's 24 GB. Autograd stays on for the CLIP part, as the published code runs it.
        with torch.no_grad():
            tensor = x800(image).to(device)
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


def _proposal_source(kind: str, count: int, device: str, precision: str = "fp32"):
    """FreeSOLO with random weights capped at ``count`` masks (its network in ``precision``, as --precision runs
    it), or ``count`` random blobs (no proposal cost)."""
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
    net = net.fold_frozen_batchnorm().to(device=device, memory_format=torch.channels_last)
    generator = FreeSOLOGenerator(net, max_proposals=count, precision=precision)
    return generator.generate


def reference_structured(clip, nlp, photos, propose, settings) -> int:
    """The published code's structure; returns the number of sentences answered."""
    import torch
    import torch.nn.functional as F

    from globallocal.data.images import x800
    from globallocal.methods.global_local.visual import crop_boxes, resnet_feature_map
    from globallocal.models.text import noun_phrase_of
    from globallocal.models.vit import resize, soft_masks

    device = clip.device
    fill = torch.tensor([0.485, 0.456, 0.406], device=device).view(3, 1, 1)
    answered = 0
    for photo in photos:
        for ref_sentences in SENTENCES:  # the reference's dataset yields refs, not images
            with torch.enable_grad():
                proposals = propose(photo)
                masks = proposals.masks.to(device)
                shared = x800(photo).to(device)
                original = resize(shared, (photo.height, photo.width))
                small = resize(shared, (clip.image_size, clip.image_size))[None]
                crops = []
                for mask, (x0, y0, x1, y1) in zip(masks, crop_boxes(proposals.boxes, photo.height, photo.width)):
                    masked = original * mask + (~mask) * fill  # a full-size image per proposal
                    crops.append(resize(masked[:, y0:y1, x0:x1], (clip.image_size, clip.image_size)))
                if clip.family == "resnet":
                    feature_map = F.normalize(resnet_feature_map(clip, small), dim=1)
                    weights = soft_masks(masks, feature_map.shape[-1])
                    global_features = clip.visual.attnpool(feature_map * weights[:, None])  # one pass per mask
                    local = F.normalize(clip.model.encode_image(torch.stack(crops)), dim=-1)
                else:
                    global_features = _plain_masked_blocks(clip, small, masks, settings.masked_blocks)
                    local = clip.model.encode_image(torch.stack(crops))
                visual = settings.alpha * global_features + (1 - settings.alpha) * local
                for sentence in ref_sentences:
                    expression = " ".join(t.text for t in nlp(sentence.lower()) if t.text != " ")
                    noun_phrase, _ = noun_phrase_of(nlp(expression))
                    t_global = clip.model.encode_text(clip.tokenizer([expression]).to(device))
                    t_local = clip.model.encode_text(clip.tokenizer([noun_phrase]).to(device))
                    if clip.family == "resnet":
                        text = settings.beta * F.normalize(t_global) + (1 - settings.beta) * F.normalize(t_local)
                        scores = visual @ text.T
                    else:
                        text = settings.beta * t_global + (1 - settings.beta) * t_local
                        scores = F.normalize(visual) @ F.normalize(text).T
                    int(scores.argmax())
                    answered += 1
    return answered


def _plain_masked_blocks(clip, image, masks, k: int):
    """SPEC 3 for a ViT as the published code runs it: every mask's tokens through the last k blocks, whole."""
    import torch

    from globallocal.models.vit import run_blocks, soft_masks, vit_blocks

    blocks = vit_blocks(clip)
    tokens = run_blocks(clip, blocks[: len(blocks) - k], clip.visual._embeds(image))
    weights = soft_masks(masks, int(round((tokens.shape[1] - 1) ** 0.5))).flatten(1)
    x = tokens.expand(len(masks), -1, -1)
    for block in blocks[len(blocks) - k:]:
        x = run_blocks(clip, [block], torch.cat([x[:, :1], x[:, 1:] * weights[:, :, None]], dim=1))
    return clip.visual._pool(x)[0] @ clip.visual.proj


def globallocal_path(clip, nlp, photos, propose, settings) -> int:
    from globallocal.segmenter import Segmenter

    segmenter = Segmenter(clip, nlp, settings)
    answered = 0
    for photo in photos:
        segmenter.set_image(photo, propose(photo))
        for ref_sentences in SENTENCES:
            answered += len(segmenter.predict_many(ref_sentences))
    return answered


def run_one(pipeline: str, model: str, source: str, proposals: int, images: int, precision: str, device: str,
            probe: bool) -> dict:
    """One row's run: sentences answered, seconds, peak memory; globallocal's CLIP stage FLOPs and seconds too.

    ``probe``: one photo once, for the memory fit (no timing)."""
    import torch
    from common import flops_of, peak_bytes, seconds

    from globallocal.methods import get_method
    from globallocal.models.clip import load_clip
    from globallocal.models.text import load_parser

    torch.manual_seed(0)
    nlp = load_parser()
    photos = _photos(1 if probe else images)
    if pipeline == "reference":
        clip = _reference_clip(model)
        clip.model.to(device)
        propose = _reference_freesolo(proposals, device) if source == "freesolo" else _proposal_source(
            source, proposals, device)
    else:
        clip = load_clip(model, "random", device=device, precision=precision)
        propose = _proposal_source(source, proposals, device, precision)
    settings = get_method("global-local").settings("paper")
    function = reference_structured if pipeline == "reference" else globallocal_path
    function(clip, nlp, photos[:1], propose, settings)  # warm-up: first-call allocations, lazy init
    if probe:
        return {"peak_bytes": peak_bytes(device)}
    start = time.perf_counter()
    answered = function(clip, nlp, photos, propose, settings)
    result = {"sentences": answered, "seconds": time.perf_counter() - start, "peak_bytes": peak_bytes(device)}
    if pipeline == "globallocal":
        from globallocal.methods import build_method

        method = build_method("global-local", clip, nlp, "paper")
        given = propose(photos[0])
        with torch.inference_mode():
            stage = lambda: method.image_features(photos[0], given)  # noqa: E731
            result["stage_flops"] = flops_of(stage)
            result["stage_seconds"] = seconds(stage, device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--models", default="RN50,ViT-B-32")
    parser.add_argument("--proposals", default="30,100")
    parser.add_argument(
        "--sources", default="freesolo,blobs",
        help="freesolo: the full pipeline; blobs: given masks, i.e. scoring only",
    )
    add_options(parser)
    parser.add_argument("--child", nargs=5, metavar=("PIPELINE", "MODEL", "SOURCE", "N", "PRECISION"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pipeline, model, source, proposals, precision = args.child
        print(json.dumps(run_one(pipeline, model, source, int(proposals), args.images, precision, args.device,
                                 args.probe)))
        return
    if args.quick:
        args.images, args.models, args.proposals, args.sources = 1, "ViT-B-32", "6", "blobs"
    chosen = precisions(args)
    peaks = preamble(args.device, chosen, args.quick)

    def row_run(pipeline: str, model: str, source: str, count: int, precision: str, probe: bool = False) -> dict:
        return child(__file__, "--images", str(args.images), "--device", args.device, *(["--probe"] * probe),
                     "--child", pipeline, model, source, str(count), precision)

    header = ["model", "proposals", "pipeline", "reference sent/s"]
    for precision in chosen:
        header += [f"{precision} sent/s", f"{precision} ratio", f"{precision} CLIP stage % of peak"]
    header += ["reference peak GB", "globallocal fp32 peak GB", "note"]
    rows, lines = [], []
    labels = {"freesolo": "full (FreeSOLO)", "blobs": "scoring only"}
    small = (2, 4) if args.quick else (5, 10)
    for source in args.sources.split(","):
        for model in args.models.split(","):
            need = LinearNeed.fitted(lambda n, m=model, s=source: float(
                row_run("reference", m, s, n, "fp32", probe=True).get("peak_bytes", float("inf"))), *small)
            for wanted in map(int, args.proposals.split(",")):
                count, note = fitting(need, wanted, args.device)
                if count == 0:
                    rows.append([model, wanted, labels[source], "", *[""] * 3 * len(chosen), "", "", note])
                    continue
                ref = row_run("reference", model, source, count, "fp32")
                ours = {precision: row_run("globallocal", model, source, count, precision) for precision in chosen}
                row = [model, count, labels[source], rate(ref)]
                for precision in chosen:
                    mine = ours[precision]
                    ratio = ratio_of(mine, ref)
                    share_text = share(mine["stage_flops"], mine["stage_seconds"], peaks[precision]) \
                        if "stage_flops" in mine else ""
                    row += [rate(mine), ratio, share_text]
                    lines.append(f"{labels[source]}, {model}, {count} proposals, {precision}: ratio {ratio}")
                errors = "; ".join(r["error"] for r in (ref, *ours.values()) if "error" in r)
                row += [gigabytes(ref), gigabytes(ours["fp32"]), "; ".join(filter(None, [note, errors]))]
                rows.append(row)
                print("row:", " | ".join(map(str, row)), flush=True)
    print(f"\nEvaluation throughput, {args.images} images x 3 refs x 3 sentences, 480x640, "
          f"{device_name(args.device)}; {load_average()}\n")
    print(markdown(header, rows))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
