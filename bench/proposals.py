"""Seconds per 640x480 photo of each mask-proposal source, random weights (they cost what trained ones do).

    python bench/proposals.py [--device cpu] [--repeats 1] [--sources freesolo,sam2-tiny,sam2-large,sam-vit_b,sam3]
                              [--sam3-weights DIR] [--quick]

Sources: FreeSOLO (ResNet-101 SOLOv2 at short side 800, batch norm folded
as after loading), SAM 2.1 hiera-tiny and hiera-large, SAM ViT-B, each SAM
at its full 1024-pixel input. Each SAM source is timed twice:

- ``paper-later``: the default settings. With random weights nearly every
  mask fails the 0.7 quality thresholds, so this is the model's cost: one
  image encoding plus 8 x 8 point prompts x 3 masks decoded.
- ``paper-later, keep all``: the same with the quality filters off
  (thresholds 0), so all 192 decoded masks are thresholded at full size,
  RLE-encoded and deduplicated by box NMS, and the survivors go through
  OpenCV's small-region removal: the most post-processing these settings
  can add. (A random model's masks overlap so much that NMS keeps few.)

SAM 3 (``sam3``) proposes per noun phrase, so its rows are its stages: the
vision pass once per photo, then the text encoder and decoder for one noun
phrase, and for the 9 noun phrases of a REFER image in one batch (threshold
0: every query kept). Without --sam3-weights it is the tests' tiny random
SAM 3, which checks the rows run and is not SAM 3's cost (bench/sam3.py).
``--quick`` times only the SAM 3 rows.

Times are the minimum over repeats after one warm-up, wall clock and
process CPU time (all threads). On a shared machine the wall times vary;
CPU time varies less.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average  # noqa: E402
from sam3 import add_sam3_option, load_source, queries  # noqa: E402

from globallocal.data.images import load_image  # noqa: E402
from globallocal.proposals import Proposals  # noqa: E402
from globallocal.proposals.sam import SAM2Generator, SAMGenerator  # noqa: E402
from globallocal.proposals.sam_weights import load_sam, load_sam2  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "img_44266.jpg"  # 640 x 480
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def timed(fn: Callable[[], Proposals], repeats: int) -> tuple[float, float, int]:
    """Minimum wall and CPU seconds of ``fn`` over ``repeats`` runs, and how many proposals it gave."""
    walls, cpus, count = [], [], 0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        count = len(fn())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), count


def freesolo_runs(device: str) -> list[tuple[str, Callable[[], Proposals]]] | None:
    """FreeSOLO's generator on a random ResNet-101 network, or None when this checkout has no FreeSOLO."""
    if importlib.util.find_spec("globallocal.proposals.freesolo") is None:
        return None
    from globallocal.proposals.freesolo import FreeSOLOGenerator
    from globallocal.proposals.solov2 import FreeSOLONet

    torch.manual_seed(0)
    generator = FreeSOLOGenerator(FreeSOLONet().eval().requires_grad_(False).fold_frozen_batchnorm().to(device))
    image = load_image(PHOTO)
    return [("reference", lambda: generator.generate(image))]


def sam_runs(family: str, model: str, device: str) -> list[tuple[str, Callable[[], Proposals]]]:
    """The two settings of one SAM model (random weights)."""
    torch.manual_seed(0)
    if family == "sam2":
        network, cls = load_sam2(model, "random", device), SAM2Generator
    else:
        network, cls = load_sam(model, "random", device), SAMGenerator
    image = load_image(PHOTO)
    default, keep_all = cls(network, model_name=model), cls(network, model_name=model, **KEEP_ALL)
    return [
        ("paper-later", lambda: default.generate(image)),
        ("paper-later, keep all", lambda: keep_all.generate(image)),
    ]


def sam3_runs(weights: str | None, device: str) -> tuple[list[tuple[str, Callable[[], object]]], str]:
    """SAM 3's stages on the photo: the vision pass, then one and nine noun phrases decoded (each after a
    vision pass of its own, so no prompt is answered from the photo's decoded prompts)."""
    from methods import SENTENCES

    from globallocal.models.text import load_parser

    source, label = load_source(weights, device)
    image, nlp = load_image(PHOTO), load_parser()
    every = queries(SENTENCES, nlp)

    def decoded(asked):
        source.set_image(image)
        return [mask for answer in source.answer(asked) for mask in answer.proposals.masks]

    return [
        ("vision encode (once per photo)", lambda: source.set_image(image) or []),
        ("encode + decode 1 noun phrase", lambda: decoded(every[:1])),
        (f"encode + decode {len(every)} noun phrases, one batch", lambda: decoded(every)),
    ], label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sources", default="freesolo,sam2-tiny,sam2-large,sam-vit_b,sam3")
    parser.add_argument("--quick", action="store_true", help="only the SAM 3 rows")
    add_sam3_option(parser)
    args = parser.parse_args()
    notes = []

    table = Table(
        title=f"mask proposals, one 640x480 photo, {args.device}, {torch.get_num_threads()} threads, "
        f"random weights, best of {args.repeats} after a warm-up (seconds); {load_average()}"
    )
    for column in ["source", "settings", "load", "wall / photo", "CPU / photo", "proposals"]:
        table.add_column(column, justify="right")
    for source in ["sam3"] if args.quick else args.sources.split(","):
        start = time.perf_counter()
        if source == "freesolo":
            runs = freesolo_runs(args.device)
            if runs is None:
                table.add_row(source, "not in this checkout", "", "", "", "")
                continue
        elif source == "sam3":
            runs, label = sam3_runs(args.sam3_weights, args.device)
            notes.append(f"sam3: {label}")
        else:
            family, _, model = source.partition("-")
            runs = sam_runs(family, model, args.device)
        load = f"{time.perf_counter() - start:.1f}"
        runs[0][1]()  # warm-up: first-call allocations and kernel choices
        for index, (settings, run) in enumerate(runs):
            wall, cpu, count = timed(run, args.repeats)
            table.add_row(source, settings, load if index == 0 else "", f"{wall:.2f}", f"{cpu:.2f}", str(count))
    Console().print(table)
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
