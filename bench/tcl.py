"""TCL soft masks: seconds per 640x480 photo, the authors' structure against globallocal's.

    python bench/tcl.py [--phrases 1,5] [--windows slide,whole,demo] [--device cpu] [--precision fp32]

Same photo, same random weights (OpenAI ViT-B/16 shapes, TCL's head shapes),
same text embeddings (encoded beforehand, not timed), PAMR and KP on:
  (a) the authors' structure, written here: per phrase the whole pipeline
      (input, every window one at a time through CLIP, the masker and the
      decoder, Sim2Mask, PAMR with its affinity computed anew, the KP branch,
      back to the window, the window average, the resize), float32;
  (b) globallocal: the image side once per photo with the windows batched,
      then all phrases through Sim2Mask, PAMR (a sparse step) and KP in one batch.
The two are checked to give the same masks before timing. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


def timed(repeats: int, function, *args) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", default="1,5")
    parser.add_argument("--windows", default="slide,whole,demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="globallocal's precision (the reference is float32)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    args = parser.parse_args()

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16-quickgelu", "random", device=args.device)
    head = TCLHead()
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    reference = TCLModel(clip, head)
    fast_clip = clip if args.precision == "fp32" else load_clip(
        "ViT-B-16-quickgelu", "random", device=args.device, precision=args.precision
    )
    if fast_clip is not clip:
        fast_clip.model.load_state_dict(clip.model.state_dict())
    fast = TCLModel(fast_clip, copy.deepcopy(head))
    photo = load_image(REPO / "examples" / "img_80472.jpg").resize((640, 480))
    counts = [int(n) for n in args.phrases.split(",")]
    texts = torch.randn(max(counts), 512)
    cpu = f"CPU, {torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"device: {device}; load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for window in args.windows.split(","):
        for count in counts:
            subset = texts[:count]
            ref_s, ref_masks = timed(args.repeats, reference_masks, reference, photo, subset, window)
            our_s, our_masks = timed(args.repeats, ours, fast, photo, subset, window)
            gap = max(float((a.float() - b).abs().max()) for a, b in zip(our_masks, ref_masks))
            rows.append((window, count, ref_s, our_s, gap))
            print(f"{window} {count}: reference {ref_s:.2f} s, globallocal {our_s:.2f} s, max |diff| {gap:.1e}",
                  flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print(f"| window | phrases | authors' structure (s) | globallocal {args.precision} (s) | speed-up | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for window, count, ref_s, our_s, gap in rows:
        print(f"| {window} | {count} | {ref_s:.2f} | {our_s:.2f} | {ref_s / our_s:.1f}x | {gap:.1e} |")


if __name__ == "__main__":
    main()
