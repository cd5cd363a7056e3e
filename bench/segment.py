"""Per-stage CPU/GPU timings of the scoring pipeline at real model sizes (random weights).

    python bench/segment.py [--device cpu] [--repeats 3]

Stages: text (expression + noun phrase for 3 phrases, spaCy included), global
(masked pooling / masked tokens of all proposals), local (masked crops
encoded), total (set_image + predict_many). Proposals are random blobs on a
480x640 photo; random weights cost the same time as trained ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from globallocal import Proposals, Segmenter, get_method  # noqa: E402
from globallocal.data.images import load_image, x800  # noqa: E402
from globallocal.methods.global_local.visual import (  # noqa: E402
    crop_boxes,
    local_features,
    resnet_global_features,
    vit_global_features,
)
from globallocal.models.clip import load_clip  # noqa: E402
from globallocal.models.text import load_parser  # noqa: E402
from globallocal.models.vit import resize  # noqa: E402

PHRASES = ["the man on the right", "a wooden chair near the table", "left guy in a red shirt"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "img_80472.jpg"


def blob_masks(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random elliptical masks of varied size and position."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    masks = []
    for _ in range(count):
        cy, cx = torch.rand(2, generator=generator) * torch.tensor([height, width])
        ry, rx = 10 + torch.rand(2, generator=generator) * torch.tensor([height / 3, width / 3])
        masks.append(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1)
    return torch.stack(masks)


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(segmenter: Segmenter, image, count: int, repeats: int) -> list[float]:
    """Median seconds of the text, global, local and total stages for ``count`` proposals."""
    clip = segmenter.clip
    height, width = image.height, image.width
    proposals = Proposals.from_masks(blob_masks(count, height, width))
    shared = x800(image).to(clip.device)
    clip_input = resize(shared, (clip.image_size, clip.image_size))[None]
    full = resize(shared, (height, width))
    windows = crop_boxes(proposals.boxes, height, width)
    fill = torch.tensor([0.485, 0.456, 0.406])
    global_fn = resnet_global_features if clip.family == "resnet" else vit_global_features

    def text_stage():
        segmenter._text_cache.clear()
        with torch.inference_mode():
            segmenter.method.text_features([segmenter.parse(p) for p in PHRASES], segmenter.encode)

    def global_stage():
        with torch.inference_mode():
            global_fn(clip, clip_input, proposals.masks)

    def local_stage():
        with torch.inference_mode():
            local_features(clip, full, proposals.masks, windows, fill, segmenter.method.crop_chunk_size)

    def total():
        segmenter._text_cache.clear()
        segmenter.set_image(image, proposals)
        segmenter.predict_many(PHRASES)

    total()  # warm-up
    return [timed(stage, repeats) for stage in (text_stage, global_stage, local_stage, total)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="RN50,ViT-B-32")
    parser.add_argument("--proposals", default="10,100")
    args = parser.parse_args()

    nlp = load_parser()
    image = load_image(EXAMPLE)
    table = Table(
        title=f"globallocal scoring, {image.width}x{image.height} photo, {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} (seconds)"
    )
    for column in ["model", "proposals", "text (3 phrases)", "global", "local", "total"]:
        table.add_column(column, justify="right")
    settings = get_method("global-local").settings("paper")
    for name in args.models.split(","):
        clip = load_clip(name, "random", device=args.device)
        segmenter = Segmenter(clip, nlp, settings)
        for count in map(int, args.proposals.split(",")):
            row = measure(segmenter, image, count, args.repeats)
            table.add_row(name, str(count), *(f"{value:.3f}" for value in row))
    Console().print(table)


if __name__ == "__main__":
    main()
