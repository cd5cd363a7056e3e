"""FreeSOLO inference (SPEC section 2) checked against plain re-implementations and hand-built cases.

The network is replaced by small stubs here so that every size and corner
case runs in milliseconds; test_freesolo.py runs the real network.
"""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from globallocal.errors import InputError  # noqa: E402
from globallocal.proposals import solov2_decode  # noqa: E402
from globallocal.proposals.freesolo import FreeSOLOGenerator  # noqa: E402
from globallocal.proposals.solov2 import HeadOutputs  # noqa: E402
from globallocal.proposals.solov2_decode import matrix_nms, point_nms, resize_masks, select_instances  # noqa: E402

GRIDS = (40, 36, 24, 16, 12)
STRIDES = (8, 8, 16, 32, 32)


# ---------------------------------------------------------------- plain re-implementations


def loop_point_nms(heat: torch.Tensor) -> torch.Tensor:
    """A cell survives when no neighbour above, to the left or above-left is larger."""
    values = heat.tolist()
    out = heat.clone()
    for b, maps in enumerate(values):
        for k, rows in enumerate(maps):
            for i, row in enumerate(rows):
                for j, value in enumerate(row):
                    neighbours = [
                        rows[y][x] for y, x in ((i - 1, j), (i, j - 1), (i - 1, j - 1)) if y >= 0 and x >= 0
                    ]
                    if any(v > value for v in neighbours):
                        out[b, k, i, j] = 0
    return out


def loop_matrix_nms(labels, masks, scores, sigma=2.0, kernel="gaussian") -> list[float]:
    """decay_j = min over higher-ranked i of the same label of f(iou_ij) / f(max_{k<i} iou_ki)."""
    flat = masks.reshape(len(masks), -1).numpy().astype(np.float64)
    inter = (flat @ flat.T).tolist()
    areas = flat.sum(1).tolist()
    n = len(labels)

    def iou(i: int, j: int) -> float:
        if labels[i] != labels[j]:
            return 0.0
        return inter[i][j] / (areas[i] + areas[j] - inter[i][j])

    def f(x: float) -> float:
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1.0 - x

    compensate = [max([iou(k, i) for k in range(i)], default=0.0) for i in range(n)]
    updated = []
    for j in range(n):
        decays = [f(iou(i, j)) / f(compensate[i]) for i in range(j) if labels[i] == labels[j]]
        updated.append(float(scores[j]) * min(decays, default=1.0))
    return updated


def plain_inference(cate_logits, kernels, mask_features, input_size, image_size, max_before_nms=500):
    """The reference's inference written out step by step on the whole candidate set at once."""
    probs, flat_kernels, strides = [], [], []
    for logits, kernel, stride in zip(cate_logits, kernels, STRIDES, strict=True):
        probs.append(loop_point_nms(logits.sigmoid())[0].permute(1, 2, 0).reshape(-1, logits.shape[1]))
        flat_kernels.append(kernel[0].permute(1, 2, 0).reshape(-1, kernel.shape[1]))
        strides += [stride] * (logits.shape[-2] * logits.shape[-1])
    probs, flat_kernels = torch.cat(probs), torch.cat(flat_kernels)
    strides = torch.tensor(strides, dtype=torch.float32)
    empty = torch.zeros((0, *image_size), dtype=torch.bool), torch.zeros(0)
    hits = (probs > 0.1).nonzero()
    if len(hits) == 0:
        return empty
    cells, labels = hits[:, 0], hits[:, 1]
    cate = probs[cells, labels]
    soft = F.conv2d(mask_features, flat_kernels[cells][:, :, None, None])[0].sigmoid()
    binary = soft > 0.5
    areas = binary.sum((1, 2)).float()
    keep = areas > strides[cells]
    if not keep.any():
        return empty
    soft, binary, areas, cate, labels = soft[keep], binary[keep], areas[keep], cate[keep], labels[keep]
    scores = cate * (soft * binary).sum((1, 2)) / areas
    order = torch.sort(scores, descending=True, stable=True).indices[:max_before_nms]
    soft, binary, labels = soft[order], binary[order], labels[order]
    scores = torch.tensor(loop_matrix_nms(labels.tolist(), binary, scores[order]))
    keep = scores >= 0.05
    if not keep.any():
        return empty
    soft, scores = soft[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices[:100]
    soft, scores = soft[order], scores[order]
    h, w = input_size
    fh, fw = soft.shape[-2:]
    up = F.interpolate(soft[None], size=(fh * 4, fw * 4), mode="bilinear", align_corners=False)[..., :h, :w]
    masks = F.interpolate(up, size=image_size, mode="bilinear", align_corners=False)[0] > 0.5
    keep = masks.flatten(1).any(1)
    return masks[keep], scores[keep]


def random_heads(seed: int, channels: int = 8, feature_size=(16, 24)) -> HeadOutputs:
    g = torch.Generator().manual_seed(seed)
    cate = [torch.randn(1, 2, s, s, generator=g) * 2 - 1.5 for s in GRIDS]
    kernels = [torch.randn(1, channels, s, s, generator=g) for s in GRIDS]
    return HeadOutputs(cate, kernels, torch.randn(1, channels, *feature_size, generator=g))


# ---------------------------------------------------------------- NMS


def test_point_nms_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    heat = torch.randint(0, 5, (2, 2, 9, 7), generator=g).float() / 4  # many ties
    torch.testing.assert_close(point_nms(heat), loop_point_nms(heat), rtol=0, atol=0)
    assert 0 < int((point_nms(heat) > 0).sum()) < int((heat > 0).sum())


@pytest.mark.parametrize(
    ("kernel", "n", "num_labels"), [("gaussian", 40, 2), ("linear", 40, 2), ("gaussian", 300, 1)]
)
def test_matrix_nms_matches_the_decay_formula(kernel, n, num_labels):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(n, 12, 12, generator=g) < torch.rand(n, 1, 1, generator=g)
    # Three bands of rows, one per third of the ranking: low-ranked masks overlap only each other.
    band = torch.arange(n) * 3 // n
    masks &= (torch.arange(12) // 4)[None, :, None] == band[:, None, None]
    masks[torch.arange(n), band * 4, 0] = True
    if kernel == "gaussian":
        masks[7] = masks[3]  # an exact duplicate: IoU 1
    labels = torch.randint(0, num_labels, (n,), generator=g)
    scores = torch.sort(torch.rand(n, generator=g), descending=True).values
    areas = masks.flatten(1).sum(1).float()
    updated = matrix_nms(labels, masks.flatten(1), areas, scores, sigma=2.0, kernel=kernel)
    expected = torch.tensor(loop_matrix_nms(labels.tolist(), masks, scores, kernel=kernel))
    torch.testing.assert_close(updated, expected, rtol=1e-5, atol=1e-7)
    assert (updated < scores).any()


# ---------------------------------------------------------------- the whole selection


@pytest.mark.parametrize(
    ("seed", "max_before_nms", "chunk_elements"), [(0, 500, 1 << 24), (1, 25, 4000), (2, 60, 1)]
)
def test_selection_matches_the_plain_reference(monkeypatch, seed, max_before_nms, chunk_elements):
    """Chunking, early stopping and compaction change nothing (small chunks force all three)."""
    monkeypatch.setattr(solov2_decode, "_CHUNK_ELEMENTS", chunk_elements)
    evaluated = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, **kw: evaluated.append(len(a)) or real_mm(a, b, **kw))
    heads = random_heads(seed)
    input_size, image_size = (61, 90), (45, 67)
    soft, scores = select_instances(heads, max_before_nms=max_before_nms)
    masks = resize_masks(soft, input_size, image_size)
    nonempty = masks.flatten(1).any(1)
    expected_masks, expected_scores = plain_inference(
        heads.cate_logits, heads.kernels, heads.mask_features, input_size, image_size, max_before_nms
    )
    assert len(expected_scores) > 5
    assert torch.equal(masks[nonempty], expected_masks)
    torch.testing.assert_close(scores[nonempty], expected_scores, rtol=1e-5, atol=1e-6)
    candidates = sum(int((point_nms(c.sigmoid()) > 0.1).sum()) for c in heads.cate_logits)
    if max_before_nms < 100:
        assert sum(evaluated) < candidates  # stopped early


def unit_kernel(channels: int, index: int) -> torch.Tensor:
    kernel = torch.zeros(channels)
    kernel[index] = 1.0
    return kernel


def hand_built_heads() -> HeadOutputs:
    """Mask features with known masks (logits +-10) and cells that pick them.

    Channel 0: top half (128 px); channel 1: 8 px; channel 2: 9 px in the bottom half.
    """
    features = torch.full((1, 3, 16, 16), -10.0)
    features[0, 0, :8] = 10
    features[0, 1, 12:14, 0:4] = 10
    features[0, 2, 12:15, 10:13] = 10
    cate = [torch.full((1, 2, s, s), -20.0) for s in GRIDS]
    kernels = [torch.zeros(1, 3, s, s) for s in GRIDS]

    def cell(level: int, label: int, y: int, x: int, logit: float, channel: int) -> None:
        cate[level][0, label, y, x] = logit
        kernels[level][0, :, y, x] = unit_kernel(3, channel)

    cell(0, 0, 0, 0, 2.0, 0)  # top half, probability 0.881
    cell(0, 0, 0, 5, -1.0, 0)  # the same mask, same label, probability 0.269: decayed below 0.05
    cell(0, 1, 2, 2, 0.0, 0)  # the same mask with the other label: untouched
    cell(0, 0, 4, 4, 3.0, 1)  # 8 px at stride 8: too small
    cell(0, 0, 6, 6, 1.0, 2)  # 9 px at stride 8: kept
    cell(2, 0, 3, 3, 3.0, 2)  # 9 px at stride 16: too small
    return HeadOutputs(cate, kernels, features)


class StubNet(nn.Module):
    """Stands in for FreeSOLONet: one candidate whose mask is where the input's red channel is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        cate = [torch.full((1, 2, s, s), -20.0, device=batch.device) for s in GRIDS]
        cate[2][0, 0, 0, 0] = 5.0
        kernels = [torch.zeros(1, 2, s, s, device=batch.device) for s in GRIDS]
        kernels[2][0, 0] = 1.0
        red = F.avg_pool2d(batch[:, :1], 4) * 4  # white ~ +9, black ~ -8.5, padding 0 (= 0.5, not inside)
        return HeadOutputs(cate, kernels, torch.cat([red, torch.zeros_like(red)], dim=1))


def test_hand_built_case_keeps_exactly_what_it_should():
    generator = FreeSOLOGenerator(StubNet())
    proposals = generator.postprocess(hand_built_heads(), (64, 64), (32, 32))
    inside = torch.sigmoid(torch.tensor(10.0))
    expected = torch.sigmoid(torch.tensor([2.0, 1.0, 0.0])) * inside
    torch.testing.assert_close(proposals.scores, expected)
    top_half = torch.zeros(32, 32, dtype=torch.bool)
    top_half[:16] = True
    assert torch.equal(proposals.masks[0], top_half)
    assert torch.equal(proposals.masks[2], top_half)  # the other label's copy
    assert proposals.masks[1].sum() > 0 and not proposals.masks[1][:16].any()


def test_duplicate_above_the_update_threshold_keeps_its_decayed_score():
    heads = hand_built_heads()
    heads.cate_logits[0][0, 0, 0, 5] = 1.5  # the duplicate now scores 0.818 -> 0.818 * exp(-2)
    _, scores = select_instances(heads)
    inside = torch.sigmoid(torch.tensor(10.0))
    assert any(
        abs(float(s) - float(torch.sigmoid(torch.tensor(1.5)) * inside * math.exp(-2))) < 1e-6 for s in scores
    )


@pytest.mark.parametrize("case", ["no candidates", "all too small", "all decayed"])
def test_empty_results_are_empty_proposals(case):
    heads = hand_built_heads()
    options = {}
    if case == "no candidates":
        heads.cate_logits = [torch.full_like(c, -20.0) for c in heads.cate_logits]
    elif case == "all too small":
        heads.mask_features[0, 0] = -10.0
        heads.mask_features[0, 2] = -10.0
    else:
        options["update_threshold"] = 0.99
    proposals = FreeSOLOGenerator(StubNet(), **options).postprocess(heads, (64, 64), (30, 40))
    assert len(proposals) == 0
    assert proposals.masks.shape == (0, 30, 40) and proposals.masks.dtype == torch.bool
    assert proposals.boxes.shape == (0, 4) and proposals.scores.shape == (0,)


# ---------------------------------------------------------------- image sizes, boxes, devices


def picture(
    width: int, height: int, boxes: list[tuple[int, int, int, int]]
) -> tuple[Image.Image, np.ndarray]:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    truth = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        array[y0:y1, x0:x1] = 255
        truth[y0:y1, x0:x1] = True
    return Image.fromarray(array), truth


@pytest.mark.parametrize(
    ("size", "boxes"),
    [
        ((1, 1), [(0, 0, 1, 1)]),
        ((33, 31), [(4, 6, 20, 25)]),
        ((640, 480), [(100, 50, 400, 300)]),
        ((2000, 100), [(1500, 10, 1900, 90)]),
    ],
)
def test_masks_come_back_at_the_image_size_and_place(size, boxes):
    image, truth = picture(*size, boxes)
    proposals = FreeSOLOGenerator(StubNet()).generate(image)
    assert len(proposals) == 1
    assert proposals.masks.shape == (1, size[1], size[0]) and proposals.masks.device.type == "cpu"
    mask = proposals.masks[0].numpy()
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9


def test_boxes_follow_the_projection_rule():
    image, truth = picture(120, 80, [(10, 10, 30, 50), (70, 20, 100, 60)])  # one mask with a gap
    proposals = FreeSOLOGenerator(StubNet()).generate(image)
    mask = proposals.masks[0].numpy()
    columns, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    cx, cy = columns.mean(), rows.mean()
    w, h = len(columns), len(rows)
    expected = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    np.testing.assert_allclose(proposals.boxes[0].numpy(), expected, atol=1e-4)
    assert w < columns.max() - columns.min() + 1  # not the tight box
    assert np.abs(mask ^ truth).sum() < 0.05 * truth.sum()


def test_generate_from_tensor_equals_generate():
    image, _ = picture(64, 48, [(8, 8, 40, 30)])
    generator = FreeSOLOGenerator(StubNet(), short_side=96)
    from globallocal.data.images import x800

    direct = generator.generate_from_tensor(x800(image, short=96), (48, 64))
    assert torch.equal(direct.masks, generator(image).masks)
    with pytest.raises(InputError):
        generator.generate_from_tensor(torch.zeros(1, 3, 8, 8), (8, 8))


@pytest.mark.parametrize(
    "options",
    [
        {"score_threshold": 1.5},
        {"max_proposals": 0},
        {"nms_kernel": "box"},
        {"nms_sigma": 0},
        {"min_area": -1},
    ],
)
def test_bad_options_are_input_errors(options):
    with pytest.raises(InputError):
        FreeSOLOGenerator(StubNet(), **options)


def test_min_area_drops_small_masks():
    image, _ = picture(100, 100, [(10, 10, 30, 30)])
    assert len(FreeSOLOGenerator(StubNet(), min_area=300).generate(image)) == 1
    assert len(FreeSOLOGenerator(StubNet(), min_area=500).generate(image)) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    image, _ = picture(200, 150, [(20, 30, 120, 110)])
    on_cpu = FreeSOLOGenerator(StubNet()).generate(image)
    on_gpu = FreeSOLOGenerator(StubNet().cuda()).generate(image)
    assert on_gpu.masks.device.type == "cpu"
    assert (on_gpu.masks ^ on_cpu.masks).sum() <= 0.001 * on_cpu.masks.sum()
    heads = hand_built_heads()
    gpu_heads = HeadOutputs(
        [c.cuda() for c in heads.cate_logits], [k.cuda() for k in heads.kernels], heads.mask_features.cuda()
    )
    torch.testing.assert_close(select_instances(gpu_heads)[1].cpu(), select_instances(heads)[1])


def test_bfloat16_runs_the_network_in_bfloat16_and_decodes_in_float32(monkeypatch):
    image, _ = picture(64, 48, [(8, 8, 40, 30)])
    reference = FreeSOLOGenerator(StubNet(), short_side=96)
    half = FreeSOLOGenerator(StubNet(), short_side=96, precision="bf16")
    inputs, decoded = [], []
    half.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].dtype))
    postprocess = half.postprocess
    monkeypatch.setattr(half, "postprocess", lambda outputs, *args: decoded.append(outputs.mask_features.dtype)
                        or postprocess(outputs, *args))
    got, expected = half.generate(image), reference.generate(image)
    assert half.model.anchor.dtype == torch.bfloat16 and inputs == [torch.bfloat16] and decoded == [torch.float32]
    assert torch.equal(got.masks, expected.masks) and got.scores.dtype == torch.float32
    torch.testing.assert_close(got.scores, expected.scores, rtol=1e-2, atol=1e-3)
    # The precision is part of what decides the proposals, named only when it is not the reference's float32.
    assert "precision" not in reference.settings and half.settings["precision"] == "bf16"


def test_float16_on_a_cpu_without_float16_units_names_bf16(monkeypatch):
    import globallocal.models.clip as clip_module

    monkeypatch.setattr(clip_module, "cpu_has_fp16_units", lambda: False)
    with pytest.raises(InputError, match="use bf16"):
        FreeSOLOGenerator(StubNet(), precision="fp16")
