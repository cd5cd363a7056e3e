"""TCL soft masks: seconds per 640x480 photo, the authors' structure against globallocal's.

    python bench/tcl.py [--phrases 1,5] [--windows slide,whole,demo] [--device cpu] [--precisions fp32,bf16] [--quick]

Same photo, same random weights (OpenAI ViT-B/16 shapes, TCL's head shapes),
same text embeddings (encoded beforehand, not timed), PAMR and KP on:
  (a) the authors' structure, written here: per phrase the whole pipeline
      (input, every window one at a time through CLIP, the masker and the
      decoder, Sim2Mask, PAMR with its affinity computed anew, the KP branch,
      back to the window, the window average, the resize), float32;
  (b) globallocal: the image side once per photo with the windows batched,
      then all phrases through Sim2Mask, PAMR (a sparse step) and KP in one batch.
(b) runs in every precision asked (the same weights, cast), each with its
speed-up over (a) and its largest soft-mask difference from it; "image side %
of peak": (b)'s dominant stage (CLIP and the head on every window) as a share
of the device's matmul peak in that precision. A row whose memory need (the
reference's PAMR neighbour stacks per phrase) exceeds free memory runs with
the phrases that fit. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import (  # noqa: E402
    LinearNeed,
    add_options,
    device_name,
    fitting,
    flops_of,
    load_average,
    markdown,
    peak_bytes,
    preamble,
    precisions,
    seconds,
    share,
)

from globallocal.data.images import load_image  # noqa: E402
from globallocal.methods.tcl import TCLHead, TCLModel, tcl_input  # noqa: E402
from globallocal.methods.tcl.network import clip_token_embeddings, clip_tokens  # noqa: E402
from globallocal.methods.tcl.pamr import pamr_offsets  # noqa: E402
from globallocal.models.clip import load_clip  # noqa: E402


def reference_pamr(guide: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """PAMR as the released code structures it: per dilation, padded copies stacked; affinity every call."""

    def shifted(x: torch.Tensor) -> torch.Tensor:
        copies = []
        for d in (1, 2, 4, 8, 12, 24):
            padded = F.pad(x, (d, d, d, d), mode="replicate")
            h, w = x.shape[-2:]
            for dy, dx in pamr_offsets((d,)):
                copies.append(padded[..., d + dy : d + dy + h, d + dx : d + dx + w])
        return torch.stack(copies, dim=2)

    def with_centre(x: torch.Tensor) -> torch.Tensor:
        copies = []
        for d in (1, 2, 4, 8, 12, 24):
            padded = F.pad(x, (d, d, d, d), mode="replicate")
            h, w = x.shape[-2:]
            copies += [padded[..., d + dy : d + dy + h, d + dx : d + dx + w] for dy in (-d, 0, d) for dx in (-d, 0, d)]
        return torch.stack(copies, dim=2)

    sigma = with_centre(guide).std(dim=2, keepdim=True)
    distance = -(shifted(guide) - guide[:, :, None]).abs() / (1e-8 + 0.1 * sigma)
    affinity = torch.softmax(distance.mean(dim=1, keepdim=True), dim=2)
    for _ in range(10):
        masks = (shifted(masks) * affinity).sum(dim=2)
    return masks


@torch.no_grad()
def reference_soft_mask(model: TCLModel, photo, text: torch.Tensor, window: str) -> torch.Tensor:
    """One phrase through the whole pipeline, window after window, float32."""
    preprocessing = "demo" if window == "demo" else "eval"
    plan = model.layout(photo.height, photo.width, window, preprocessing)
    full = tcl_input(photo, preprocessing).to(model.device)
    pad, head = plan.padding, model.head
    text = F.normalize(text[None].to(model.device), dim=-1, eps=1e-6)
    total = full.new_zeros((1, 1, *plan.size))
    count = full.new_zeros((1, 1, *plan.size))
    for w in plan.windows:
        crop = full[None, :, w.top : w.top + w.height, w.left : w.left + w.width]
        crop = F.pad(crop, (pad.left, pad.right, pad.top, pad.bottom))
        z, patches = clip_tokens(model.clip, crop)
        pixels = F.normalize(head.pixel_embeddings(z, *plan.grid).float(), dim=1, eps=1e-6)
        mask = head.sim2mask(torch.einsum("bchw,nc->bnhw", pixels, text))
        if window != "demo":
            guide = F.interpolate(crop, size=plan.mask_size, mode="bilinear", align_corners=True)
            mask = reference_pamr(guide, mask)
        tokens = F.normalize(clip_token_embeddings(model.clip, patches).float(), dim=1, eps=1e-6)
        kp = torch.sigmoid(10 * (torch.einsum("bchw,nc->bnhw", tokens, text) - 0.25))
        kp = F.interpolate(kp, size=plan.mask_size, mode="bilinear", align_corners=False)
        mask = 0.3 * kp + 0.7 * mask
        mask = F.interpolate(mask, size=plan.padded, mode="bilinear", align_corners=False)
        mask = mask[..., pad.top : pad.top + w.height, pad.left : pad.left + w.width]
        total[..., w.top : w.top + w.height, w.left : w.left + w.width] += mask
        count[..., w.top : w.top + w.height, w.left : w.left + w.width] += 1
    masks = total / count
    if window == "demo":
        masks = reference_pamr(full[None], masks)
    return F.interpolate(masks, size=(photo.height, photo.width), mode="bilinear", align_corners=False)[0, 0].cpu()


def ours(model: TCLModel, photo, texts: torch.Tensor, window: str) -> torch.Tensor:
    preprocessing = "demo" if window == "demo" else "eval"
    features = model.image_features(photo, window, preprocessing, pamr=True)
    return model.soft_masks(features, texts, (photo.height, photo.width), window, preprocessing, True, 0.3)


def reference_masks(model: TCLModel, photo, texts: torch.Tensor, window: str) -> list[torch.Tensor]:
    return [reference_soft_mask(model, photo, text, window) for text in texts]


def timed(function, model: TCLModel, photo, texts: torch.Tensor, window: str, args) -> tuple[float, list]:
    """The best of ``args.repeats`` runs' seconds, and the masks."""
    results = []
    elapsed = seconds(lambda: results.append(function(model, photo, texts, window)), args.device, args.repeats)
    return elapsed, results[-1]


def image_side_share(model: TCLModel, photo, window: str, device: str, peak: float) -> str:
    """The image side's (CLIP and the head on every window, PAMR's affinity) share of the matmul peak."""
    preprocessing = "demo" if window == "demo" else "eval"
    with torch.inference_mode():
        side = lambda: model.image_features(photo, window, preprocessing, pamr=True)  # noqa: E731
        return share(flops_of(side), seconds(side, device), peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", default="1,5")
    parser.add_argument("--windows", default="slide,whole,demo")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    add_options(parser)
    args = parser.parse_args()
    chosen = precisions(args)
    peaks = preamble(args.device, chosen, args.quick)
    windows, counts = args.windows.split(","), list(map(int, args.phrases.split(",")))
    if args.quick:
        windows, counts = ["whole"], [1]

    torch.manual_seed(0)
    head = TCLHead()
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    models = {}
    for precision in chosen:
        torch.manual_seed(0)
        clip = load_clip("ViT-B-16-quickgelu", "random", device=args.device, precision=precision)
        if models:
            clip.model.load_state_dict(models["fp32"].clip.model.state_dict())  # the float32 weights, cast
        models[precision] = TCLModel(clip, copy.deepcopy(head))
    photo = load_image(REPO / "examples" / "img_80472.jpg").resize((640, 480))
    texts = torch.randn(max(counts), 512)
    need = LinearNeed(peak_bytes(args.device), 4 * 4 * 48 * photo.width * photo.height)
    header = ["window", "phrases", "authors' structure fp32 (s)"]
    for precision in chosen:
        header += [f"{precision} (s)", f"{precision} speed-up", f"{precision} max abs diff",
                   f"{precision} image side % of peak"]
    rows = []
    for window in windows:
        for wanted in counts:
            count, note = fitting(need, wanted, args.device)
            subset = texts[:count]
            reference, expected = timed(reference_masks, models["fp32"], photo, subset, window, args)
            row = [window, count, f"{reference:.2f}"]
            for precision, model in models.items():
                elapsed, masks = timed(ours, model, photo, subset, window, args)
                gap = max(float((a.float() - b).abs().max()) for a, b in zip(masks, expected))
                row += [f"{elapsed:.2f}", f"{reference / elapsed:.1f}x", f"{gap:.1e}",
                        image_side_share(model, photo, window, args.device, peaks[precision])]
            rows.append(row + ([note] if note else []))
            print("row:", " | ".join(map(str, row)), flush=True)
    print(f"\nTCL soft masks, 640x480 photo, ViT-B-16 + TCL head (random weights), {device_name(args.device)}; "
          f"{load_average()}\n")
    print(markdown(header, rows))


if __name__ == "__main__":
    main()
