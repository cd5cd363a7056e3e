"""Per-stage timings of FreeSOLO proposals on one photo, against a reference-style run.

    python bench/freesolo.py [--repeats 3] [--image examples/img_44266.jpg] [--cate-bias 5]

One 800-short-side forward of a 480x640 photo (800 x 1066, padded to
800 x 1088) with random weights whose category bias is set high, so that
nearly every grid cell is a candidate: the worst case for post-processing.
Random weights cost the same time as trained ones in the network.

"ours" is what FreeSOLOGenerator runs (batch norm folded into the convs,
channels-last tensors, no embedding head, chunked selection with early
stop, per-label Matrix NMS). "reference-style" is the same network run the
way the authors' code runs it (separate frozen batch norm, contiguous
tensors, embedding head computed, every candidate mask at once, one IoU
matrix), written here for comparison. Both post-processings must return the
same proposals; the script says whether they do.

Times are the minimum over repeats, wall clock and process CPU time (all
threads). On a shared machine the wall times vary; compare the columns of
one run. GFLOP (convolutions and matrix products, counted by PyTorch) says
how close a stage runs to the machine's peak.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from globallocal.data.images import load_image, x800  # noqa: E402
from globallocal.proposals.freesolo import FreeSOLOGenerator  # noqa: E402
from globallocal.proposals.solov2 import INSTANCE_STRIDES, FreeSOLONet, HeadOutputs  # noqa: E402
from globallocal.proposals.solov2_decode import point_nms  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "img_44266.jpg"


def reference_style_heads(model: FreeSOLONet, features: list[torch.Tensor]) -> HeadOutputs:
    """The heads as the authors' code runs them, embedding head included."""
    head = model.ins_head
    p2, p3, p4, p5, p6 = features
    levels = [F.interpolate(p2, scale_factor=0.5, mode="bilinear"), p3, p4, p5]
    levels.append(F.interpolate(p6, size=p5.shape[-2:], mode="bilinear"))
    cate_logits, kernels = [], []
    for feature, grid in zip(levels, head.num_grids, strict=True):
        _, _, h, w = feature.shape
        y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        feature = torch.cat([feature, x[None, None], y[None, None]], dim=1)
        feature = F.interpolate(feature, size=(grid, grid), mode="bilinear")
        kernels.append(head.kernel_pred(head.kernel_tower(feature)))
        tower = head.cate_tower(feature[:, :-2])
        cate_logits.append(head.cate_pred(tower))
        head.emb_pred(tower)
    return HeadOutputs(cate_logits, kernels, model.mask_head([p2, p3, p4, p5]))


def reference_style_postprocess(
    outputs: HeadOutputs, input_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All candidate masks at once, one full IoU matrix, as the authors' inference does."""
    probs = torch.cat(
        [point_nms(c.sigmoid())[0].permute(1, 2, 0).reshape(-1, 2) for c in outputs.cate_logits]
    )
    kernels = torch.cat([k[0].permute(1, 2, 0).reshape(-1, k.shape[1]) for k in outputs.kernels])
    cells_per_level = [c.shape[-1] * c.shape[-2] for c in outputs.cate_logits]
    strides = torch.cat(
        [torch.full((n,), float(s)) for n, s in zip(cells_per_level, INSTANCE_STRIDES, strict=True)]
    )
    hits = (probs > 0.1).nonzero()
    cate, labels = probs[hits[:, 0], hits[:, 1]], hits[:, 1]
    soft = F.conv2d(outputs.mask_features, kernels[hits[:, 0]][:, :, None, None])[0].sigmoid()
    binary = soft > 0.5
    areas = binary.sum((1, 2)).float()
    keep = areas > strides[hits[:, 0]]
    soft, binary, areas, cate, labels = soft[keep], binary[keep], areas[keep], cate[keep], labels[keep]
    scores = cate * (soft * binary.float()).sum((1, 2)) / binary.sum((1, 2))
    order = torch.sort(scores, descending=True, stable=True).indices[:500]
    soft, binary, areas, scores, labels = (
        soft[order],
        binary[order],
        areas[order],
        scores[order],
        labels[order],
    )
    n = len(scores)
    flat = binary.reshape(n, -1).float()
    inter = flat @ flat.T
    iou = (inter / (areas[None] + areas[:, None] - inter)).triu(diagonal=1)
    same = (labels[None] == labels[:, None]).float().triu(diagonal=1)
    compensate = (iou * same).max(dim=0).values[:, None]
    decay = (torch.exp(-2 * (iou * same) ** 2) / torch.exp(-2 * compensate**2)).min(dim=0).values
    scores = scores * decay
    keep = scores >= 0.05
    soft, scores = soft[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices[:100]
    soft, scores = soft[order], scores[order]
    h, w = input_size
    fh, fw = soft.shape[-2:]
    ratio = max(math.ceil(h / fh), math.ceil(w / fw))
    soft = F.interpolate(soft[None], size=(fh * ratio, fw * ratio), mode="bilinear")[..., :h, :w]
    masks = F.interpolate(soft, size=image_size, mode="bilinear")[0] > 0.5
    keep = masks.flatten(1).any(dim=1)
    return masks[keep], scores[keep]


def timed(function: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of all threads, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", type=Path, default=EXAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cate-bias", type=float, default=5.0, help="category logit bias of the random model"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = FreeSOLONet().eval().requires_grad_(False)
    with torch.no_grad():
        reference.ins_head.cate_pred.bias.fill_(args.cate_bias)
    ours = copy.deepcopy(reference).fold_frozen_batchnorm().to(memory_format=torch.channels_last)
    generator = FreeSOLOGenerator(ours)
    rgb = load_image(args.image)
    tensor = x800(rgb)
    input_size, image_size = (tensor.shape[-2], tensor.shape[-1]), (rgb.height, rgb.width)

    stages = ("backbone", "heads", "post-processing")
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        run: {stage: [] for stage in stages} for run in ("ours", "reference-style")
    }
    with torch.inference_mode():
        batch = generator.prepare(tensor)
        for _ in range(args.repeats):
            wall, cpu, features = timed(lambda: ours.features(batch))  # channels-last, from prepare()
            times["ours"]["backbone"].append((wall, cpu))
            wall, cpu, heads = timed(lambda: ours.heads(features))  # noqa: B023
            times["ours"]["heads"].append((wall, cpu))
            wall, cpu, proposals = timed(lambda: generator.postprocess(heads, input_size, image_size))  # noqa: B023
            times["ours"]["post-processing"].append((wall, cpu))

            wall, cpu, ref_features = timed(lambda: reference.features(batch.contiguous()))
            times["reference-style"]["backbone"].append((wall, cpu))
            wall, cpu, ref_heads = timed(lambda: reference_style_heads(reference, ref_features))  # noqa: B023
            times["reference-style"]["heads"].append((wall, cpu))
            wall, cpu, (ref_masks, ref_scores) = timed(
                lambda: reference_style_postprocess(ref_heads, input_size, image_size)  # noqa: B023
            )
            times["reference-style"]["post-processing"].append((wall, cpu))
        candidates = sum(int((point_nms(c.sigmoid()) > 0.1).sum()) for c in heads.cate_logits)
        same_heads_masks, same_heads_scores = reference_style_postprocess(heads, input_size, image_size)
        gflop = {}
        for stage, work in zip(
            stages,
            (
                lambda: ours.features(batch),
                lambda: ours.heads(features),
                lambda: generator.postprocess(heads, input_size, image_size),
            ),
            strict=True,
        ):
            with FlopCounterMode(display=False) as counter:
                work()
            gflop[stage] = counter.get_total_flops() / 1e9

    table = Table(
        title=f"FreeSOLO R101, {rgb.width}x{rgb.height} photo -> {input_size[1]}x{input_size[0]} input, "
        f"{torch.get_num_threads()} threads, seconds, min of {args.repeats}"
    )
    columns = ("stage", "ours GFLOP", "ours wall", "ours CPU", "ref-style wall", "ref-style CPU", "CPU ratio")
    for column in columns:
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in (*stages, "total"):
        picks = stages if stage == "total" else (stage,)
        best = {
            (run, kind): sum(min(t[kind] for t in times[run][s]) for s in picks)
            for run in times
            for kind in (0, 1)
        }
        row = [f"{best[run, kind]:.2f}" for run in times for kind in (0, 1)]
        flops = f"{sum(gflop[s] for s in picks):.0f}"
        table.add_row(stage, flops, *row, f"{best['ours', 1] / best['reference-style', 1]:.2f}")
    console = Console(width=110)
    console.print(table)
    same = len(same_heads_scores) == len(proposals) and torch.equal(same_heads_masks, proposals.masks)
    console.print(
        f"{candidates} candidates after point-NMS, {len(proposals)} proposals. On the same head outputs "
        f"the reference-style post-processing gives {'the same' if same else 'DIFFERENT'} masks (max "
        f"score difference {(same_heads_scores - proposals.scores).abs().max():.2g})."
    )
    if len(ref_scores) == len(proposals):
        differing = int((ref_masks ^ proposals.masks).sum()) / max(1, int(proposals.masks.sum()))
        console.print(
            f"End to end (reference-style network too) {len(ref_scores)} proposals, "
            f"{100 * differing:.4f}% of mask pixels differ (float rounding of the folded batch norm)."
        )
    else:
        console.print(f"End to end (reference-style network too) {len(ref_scores)} proposals.")


if __name__ == "__main__":
    main()
