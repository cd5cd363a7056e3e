"""Per-stage seconds of the two methods on one photo, and HybridGL against its authors' structure.

    python bench/methods.py [--device cpu] [--precisions fp32,bf16] [--proposals 30,100] [--repeats 1] [--quick]
                            [--sam3-weights DIR]

Same photo (640x427), same random ViT-B-16 weights (QuickGELU, as OpenAI's),
same random blob proposals, workload of one REFER image: 3 refs of 3
sentences each.

  global-local: its ``paper`` preset on ViT-B-16 (text = spaCy and CLIP text
    features of the 9 sentences; global = masked tokens of all proposals;
    local = masked crops encoded).
  hybridgl: its ``hybridgl-paper`` preset (text = the text analysis and all
    text features; inputs = blur, composites and token masks; hybrid = both
    224 x 224 passes of every proposal; GEM = GEM's 448 x 448 tokens; guidance
    = heat maps, spatial guidance and answers of the 9 sentences).
  total = the image once, then the 9 sentences, as ``Segmenter`` runs them.
  authors' structure: HybridGL as the published script runs it, written here:
    for every ref the proposals' inputs are built again one at a time at full
    resolution (OpenCV composite, a full-size masked image each) and both
    passes of every proposal run in one batch; for every sentence spaCy
    parses the text 8 times (each helper parses again), every text is encoded
    alone over CLIP's full 77-token context, GEM runs its 448 x 448 pass
    again, and the GEM score loops over the masks. The arithmetic is the
    method's own; only the structure differs. It runs in float32, as
    published; the methods run in every precision asked (the same weights,
    cast), each with its speed-up over it. "hybrid % of peak": HybridGL's
    dominant stage (both passes of every proposal) as a share of the
    device's matmul peak in that precision. Before a proposal count starts,
    its memory need (the authors' structure holds every proposal's two views
    and full-size masked images at once) is checked against free memory.
  SAM 3 (a second table, bench/sam3.py): --method sam3 (SAM 3 alone, no
    CLIP) and global-local-sam3 / hybridgl-sam3 (SAM 3's instances of each
    sentence's noun phrase as the candidates) on the same photo and 9
    sentences: SAM 3's vision pass with the method's per-photo work, the 9
    noun phrases decoded in one batch, then the new masks' features and the
    scoring (--quick: SAM 3's best 2 instances per noun phrase, else all).
    Without --sam3-weights SAM 3 is the tests' tiny random model: the rows
    check the stages run; they are not SAM 3's cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
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
from sam3 import add_sam3_option, method_rows  # noqa: E402
from segment import blob_masks  # noqa: E402

from globallocal.data.images import IMAGENET_MEAN, IMAGENET_STD, load_image  # noqa: E402
from globallocal.methods import ImageFeatures, build_method  # noqa: E402
from globallocal.methods.hybridgl.gem import gem_heat_map, gem_input, gem_tokens  # noqa: E402
from globallocal.methods.hybridgl.text import analyse_text, gem_k, guidance_map  # noqa: E402
from globallocal.methods.hybridgl.visual import hybrid_features  # noqa: E402
from globallocal.models.clip import load_clip  # noqa: E402
from globallocal.models.text import encode_texts, load_parser, parse_phrase, prepare_expression  # noqa: E402
from globallocal.proposals import Proposals  # noqa: E402

EXAMPLE = REPO / "examples" / "img_80472.jpg"
REFS = [
    ["the man on the right", "right guy", "man behind the car"],
    ["the woman holding an umbrella", "lady left", "woman with a red bag"],
    ["a wooden chair near the table", "the smallest chair", "chair in the middle"],
]
SENTENCES = [sentence for ref in REFS for sentence in ref]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


class CachedEncoder:
    """The segmenter's text cache: each distinct string encoded once, in batches."""

    def __init__(self, clip) -> None:
        self.clip, self.features = clip, {}

    def __call__(self, texts):
        missing = [text for text in dict.fromkeys(texts) if text not in self.features]
        if missing:
            self.features.update(zip(missing, encode_texts(missing, self.clip)))
        return torch.stack([self.features[text] for text in texts])


def measure_method(name: str, preset: str, clip, nlp, image, proposals: Proposals, repeats: int) -> dict[str, float]:
    """Per-stage seconds of one method on the workload."""
    method = build_method(name, clip, nlp, preset)
    stages: dict[str, float] = {}
    with torch.inference_mode():
        parsed = [parse_phrase(sentence, nlp) for sentence in SENTENCES]

        def text() -> None:
            if name == "hybridgl":
                method.analyse.cache_clear()
            encoder = CachedEncoder(clip)
            for item in [parse_phrase(sentence, nlp) for sentence in SENTENCES]:
                encoder(method.text_strings(item))

        stages["text"] = median(text, repeats)
        if name == "global-local":
            tensors = {}
            stages["image"] = median(lambda: tensors.update(method.image_features(image, proposals)), repeats)
        else:
            from globallocal.methods.hybridgl.visual import clip_inputs

            s = method.settings
            inputs = []
            stages["inputs"] = median(lambda: inputs.append(clip_inputs(
                image, proposals.masks, input_normalization=s.input_normalization, local_fill=s.local_fill)), repeats)
            hybrid = lambda: hybrid_features(clip, *inputs[-1], chunk_size=method.chunk)  # noqa: E731
            stages["hybrid"] = median(hybrid, repeats)
            stages["hybrid_flops"] = flops_of(hybrid)
            stages["GEM"] = median(lambda: gem_tokens(clip, gem_input(image).to(clip.device)), repeats)
            tensors = method.image_features(image, proposals)
        features = ImageFeatures(image, proposals, tensors)
        encoder = CachedEncoder(clip)
        for item in parsed:
            encoder(method.text_strings(item))
        stages["answers"] = median(lambda: method.answer(features, parsed, encoder), repeats)

        def total() -> None:
            encoder = CachedEncoder(clip)
            everything = ImageFeatures(image, proposals, method.image_features(image, proposals))
            method.answer(everything, [parse_phrase(sentence, nlp) for sentence in SENTENCES], encoder)

        stages["total"] = median(total, repeats)
    return stages


def _reference_inputs(image, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The proposals' CLIP inputs built one at a time at full resolution, as the published loop does."""
    import cv2

    rgb8 = np.asarray(image)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x_in = (torch.from_numpy(rgb8.copy()).permute(2, 0, 1).float() / 255 - mean) / std
    fill = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    blur = cv2.GaussianBlur(rgb8.copy(), (15, 15), 0)
    global_inputs, local_inputs = [], []
    for mask in masks:
        mask8 = mask.numpy().astype(np.uint8)
        sharp = cv2.bitwise_and(rgb8, rgb8, mask=mask8)
        composite = cv2.add(sharp, (blur * (1 - mask8)[:, :, None]).astype(np.uint8))
        view = torch.from_numpy(composite).permute(2, 0, 1).float()[None] / 255
        view = F.interpolate(view, size=(224, 224), mode="bilinear", align_corners=False)[0]
        global_inputs.append((view - mean) / std)
        m = mask.float()[None, None]
        masked = x_in[None] * m + (1 - m) * fill  # a full-size image per proposal
        local_inputs.append(F.interpolate(masked, size=(224, 224), mode="bilinear", align_corners=False)[0])
    token_masks = F.interpolate(masks.float()[:, None], size=(14, 14), mode="bilinear", align_corners=False)
    return torch.stack(global_inputs), torch.stack(local_inputs), token_masks.flatten(1)


def authors_structure(clip, nlp, image, proposals: Proposals) -> None:
    """One image's refs and sentences, structured as the published script (see the module docstring)."""
    masks = proposals.masks
    height, width = masks.shape[1:]
    on_device = masks.to(clip.device)
    with torch.no_grad():
        for ref in REFS:
            global_inputs, local_inputs, token_masks = _reference_inputs(image, masks)
            features = F.normalize(hybrid_features(clip, global_inputs, local_inputs, token_masks,
                                                   chunk_size=len(masks)), dim=-1)
            for sentence in ref:
                expression = prepare_expression(sentence, nlp)
                for _ in range(8):  # direction, noun phrase, other nouns (2), relation (3), the rest: parsed again
                    nlp(expression)
                item = parse_phrase(sentence, nlp)
                others = analyse_text(nlp(expression)).other_noun_phrases
                texts = [expression, item.noun_phrase, *("a photo of " + other for other in others)]
                encoded = [clip.model.encode_text(clip.tokenizer([text]).to(clip.device)) for text in texts]
                scores = features @ F.normalize(0.5 * encoded[0] + 0.5 * encoded[1], dim=-1)[0]
                tokens = gem_tokens(clip, gem_input(image).to(clip.device))
                gem_prompt = clip.tokenizer([f"a photo of a {item.noun_phrase}."]).to(clip.device)
                gem_text = clip.model.encode_text(gem_prompt)[0]
                guidance = guidance_map(gem_heat_map(tokens, gem_text), height, width, "none")
                k = gem_k("none")
                for mask in on_device:  # the published per-mask loop
                    m = mask.float()
                    _ = (guidance * (2 - k) * m / m.sum()).sum() - (guidance * k * (1 - m) / (1 - m).sum()).sum()
                torch.topk(torch.softmax(scores, dim=0), 3)


def authors_need(image, clip) -> LinearNeed:
    """The authors' structure's memory: this process now, plus per proposal its full-size masked image and
    the widest activation of its two views in one block (the MLP's and the attention's, float32)."""
    tokens = (clip.image_size // 16) ** 2 + 1
    heads = clip.visual.transformer.resblocks[0].attn.num_heads
    per_view = 4 * tokens * (4 * clip.visual.transformer.width + heads * tokens)
    return LinearNeed(peak_bytes(str(clip.device)), 3 * 4 * image.width * image.height + 2 * 2 * per_view)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--proposals", default="30,100")
    add_sam3_option(parser)
    args = parser.parse_args()
    chosen = precisions(args)
    peaks = preamble(args.device, chosen, args.quick)
    counts = [4] if args.quick else list(map(int, args.proposals.split(",")))

    nlp = load_parser()
    image = load_image(EXAMPLE)
    clips = {}
    for precision in chosen:
        torch.manual_seed(0)
        clips[precision] = load_clip("ViT-B-16-quickgelu", "random", device=args.device, precision=precision)
        clips[precision].model.load_state_dict(clips["fp32"].model.state_dict())  # the float32 weights, cast
    header = ["proposals", "method", "precision", "text", "image / inputs", "hybrid", "GEM", "answers", "total",
              "authors' structure (fp32)", "speed-up", "hybrid % of peak", "note"]
    rows = []
    for wanted in counts:
        count, note = fitting(authors_need(image, clips["fp32"]), wanted, args.device)
        proposals = Proposals.from_masks(blob_masks(count, image.height, image.width))
        reference = seconds(lambda proposals=proposals: authors_structure(clips["fp32"], nlp, image, proposals),
                            args.device)
        for precision, clip in clips.items():
            local = measure_method("global-local", "paper", clip, nlp, image, proposals, args.repeats)
            rows.append([count, "global-local", precision, f"{local['text']:.2f}", f"{local['image']:.2f}", "", "",
                         f"{local['answers']:.2f}", f"{local['total']:.2f}", "", "", "", note])
            hybrid = measure_method("hybridgl", "hybridgl-paper", clip, nlp, image, proposals, args.repeats)
            rows.append([count, "hybridgl", precision, f"{hybrid['text']:.2f}", f"{hybrid['inputs']:.2f}",
                         f"{hybrid['hybrid']:.2f}", f"{hybrid['GEM']:.2f}", f"{hybrid['answers']:.2f}",
                         f"{hybrid['total']:.2f}", f"{reference:.2f}", f"{reference / hybrid['total']:.1f}x",
                         share(hybrid["hybrid_flops"], hybrid["hybrid"], peaks[precision]), note])
            print("row:", " | ".join(map(str, rows[-1])), flush=True)
    print(f"\n{image.width}x{image.height} photo, ViT-B-16 (random weights), {device_name(args.device)}, 3 refs x 3 "
          f"sentences, median of {args.repeats} (s); {load_average()}\n")
    print(markdown(header, rows))

    cap = 2 if args.quick else None  # --quick: SAM 3's best 2 instances per noun phrase
    header, rows, label = method_rows(args.sam3_weights, args.device, clips, nlp, image, SENTENCES, args.repeats,
                                      cap)
    print(f"\nSAM 3 uses: {label}; at most {cap or 'all'} instances per noun phrase; same photo and sentences, "
          "CLIP ViT-B-16 (random weights), SAM 3 in fp32, "
          f"{device_name(args.device)}, median of {args.repeats} (s); {load_average()}\n")
    print(markdown(header, rows))


if __name__ == "__main__":
    main()
