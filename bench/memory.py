"""Peak memory of scoring many proposals on a large photo (CPU).

    python bench/memory.py [--size 4000x3000] [--proposals 100] [--models RN50,ViT-B-32] [--freesolo-size 6000x4000]

Each model runs in its own process; the table gives its peak resident memory
(max RSS, which includes the Python runtime, torch and the model weights) and
the time of set_image + 3 phrases. Proposals are random blobs at full size,
held as bool masks (N x H x W bytes: 1.2 GB for 100 masks of 12 megapixels).
A second table gives the peak of FreeSOLO's post-processing alone (soft masks
to full-size masks and boxes) on a 6000x4000 photo, next to the size of the
masks it returns.
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
sys.path.insert(0, str(REPO / "bench"))


def run_one(model: str, width: int, height: int, count: int, chunk_size: int) -> dict:
    import numpy as np
    from segment import PHRASES, blob_masks

    from globallocal import Proposals, Segmenter, get_method
    from globallocal.models.clip import load_clip
    from globallocal.models.text import load_parser

    photo = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    proposals = Proposals.from_masks(blob_masks(count, height, width))
    settings = get_method("global-local").settings("paper", chunk_size=chunk_size)
    segmenter = Segmenter(load_clip(model, "random"), load_parser(), settings)
    start = time.perf_counter()
    segmenter.set_image(photo, proposals)
    segmenter.predict_many(PHRASES)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_freesolo_postprocess(width: int, height: int, count: int) -> dict:
    """FreeSOLO's post-processing alone: ``count`` stride-4 soft masks to full-size bool masks and boxes.

    The network is skipped (its weights are not needed to measure this): the
    instance selection is replaced by ``count`` soft blobs at stride 4 of the
    800-short-side input, as FreeSOLO would hand them on.
    """
    import torch

    from globallocal.data.images import short_side_size
    from globallocal.proposals import freesolo
    from globallocal.proposals.solov2 import SIZE_DIVISIBILITY, FreeSOLONet

    input_size = short_side_size(height, width, 800)
    padded = [-(-side // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for side in input_size]
    feat_h, feat_w = padded[0] // 4, padded[1] // 4
    generator = torch.Generator().manual_seed(0)
    ys = torch.arange(feat_h, dtype=torch.float32)[:, None]
    xs = torch.arange(feat_w, dtype=torch.float32)[None, :]
    centres = torch.rand(count, 2, generator=generator) * torch.tensor([feat_h, feat_w])
    radii = 5 + torch.rand(count, generator=generator) * min(feat_h, feat_w) / 4
    soft = torch.stack([
        torch.sigmoid((r - ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()) / 2) for (cy, cx), r in zip(centres, radii)
    ])
    scores = torch.linspace(1.0, 0.1, count)
    freesolo.select_instances = lambda outputs, **options: (soft, scores)
    with torch.device("meta"):
        model = FreeSOLONet()
    start = time.perf_counter()
    proposals = freesolo.FreeSOLOGenerator(model).postprocess(None, tuple(input_size), (height, width))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "masks_mb": proposals.masks.numel() / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT")
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--models", default="RN50,ViT-B-32")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--freesolo-size", default="6000x4000", help="WIDTHxHEIGHT of the FreeSOLO case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    if args.child == "freesolo-postprocess":
        print(json.dumps(run_freesolo_postprocess(width, height, args.proposals)))
        return
    if args.child:
        print(json.dumps(run_one(args.child, width, height, args.proposals, args.chunk_size)))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Peak memory, {width}x{height} photo, {args.proposals} proposals, chunk {args.chunk_size}")
    for column in ("model", "peak RSS (MB)", "set_image + 3 phrases (s)"):
        table.add_column(column, justify="right")
    for model in args.models.split(","):
        command = [sys.executable, __file__, "--size", args.size, "--proposals", str(args.proposals),
                   "--chunk-size", str(args.chunk_size), "--child", model]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        table.add_row(model, f"{result['peak_mb']:.0f}", f"{result['seconds']:.1f}")
    Console().print(table)

    # FreeSOLO's post-processing at full size (what dominates `segment` on a large photo), in its own process.
    freesolo_size = args.freesolo_size
    fw, fh = map(int, freesolo_size.lower().split("x"))
    command = [sys.executable, __file__, "--size", freesolo_size, "--proposals", str(args.proposals),
               "--child", "freesolo-postprocess"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    table = Table(title=f"FreeSOLO post-processing, {fw}x{fh} photo, {args.proposals} masks")
    for column in ("returned masks (MB)", "peak RSS (MB)", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['masks_mb']:.0f}", f"{result['peak_mb']:.0f}", f"{result['seconds']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
