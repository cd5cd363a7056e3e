"""SAM 2 and SAM proposal sources on randomly initialised models built by the packages themselves.

The models are the packages' own SAM 2.1 hiera-tiny config and SAM ViT-B
registry entry with random weights, shrunk to a 128-pixel input so that an
image encoding takes a fraction of a second on a CPU (the 1024-pixel
original takes 10 s or more). Tests that need a package skip, with the
reason, when the optional [sam] extra is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from globallocal.errors import InputError, WeightsError  # noqa: E402
from globallocal.methods import get_method  # noqa: E402
from globallocal.proposals import Proposals, postprocess, projection_boxes  # noqa: E402
from globallocal.proposals import sam_weights as sam_module  # noqa: E402
from globallocal.proposals.sam import SAM_SETTINGS, SAM2Generator, SAMGenerator  # noqa: E402
from globallocal.proposals.sam_weights import SAM_WEIGHTS_URL, load_sam, load_sam2  # noqa: E402
from globallocal.proposals.sources import build_proposal_generator  # noqa: E402

HAS_SAM2 = importlib.util.find_spec("sam2") is not None
HAS_SAM = importlib.util.find_spec("segment_anything") is not None
HAS_CV2 = importlib.util.find_spec("cv2") is not None
needs_sam2 = pytest.mark.skipif(not HAS_SAM2, reason="sam2 is not installed (optional [sam] extra; make install)")
needs_sam = pytest.mark.skipif(
    not HAS_SAM, reason="segment-anything is not installed (optional [sam] extra; make install)"
)
needs_cv2 = pytest.mark.skipif(not HAS_CV2, reason="OpenCV is not installed (optional [sam] extra; make install)")

INPUT_SIZE = 128  # the shrunk models' input side, instead of 1024
HEIGHT, WIDTH = 64, 96
# Thresholds at 0 switch the packages' quality filters off and box NMS at 1.0
# removes no duplicate: every decoded mask counts (a random model's masks overlap a lot).
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "min_mask_region_area": 0, "box_nms_thresh": 1.0}
KEEP_NONE = {"pred_iou_thresh": 1.0, "stability_score_thresh": 1.0, "min_mask_region_area": 0}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 64x96 photo-like image: a bright disc and a dark bar on a gradient."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    picture = np.stack([xs * 2, ys * 3, np.full_like(xs, 90)], axis=-1).astype(np.uint8)
    picture[(ys - 30) ** 2 + (xs - 30) ** 2 < 15**2] = (250, 240, 20)
    picture[10:20, 55:90] = (10, 10, 60)
    return picture


@pytest.fixture(scope="module")
def small_sam2() -> nn.Module:
    """SAM 2.1 hiera-tiny from the package's config, random weights, at INPUT_SIZE."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2

    torch.manual_seed(0)
    config = HF_MODEL_ID_TO_FILENAMES["facebook/sam2.1-hiera-tiny"][0]
    return build_sam2(config, None, device="cpu", hydra_overrides_extra=[f"++model.image_size={INPUT_SIZE}"])


@pytest.fixture(scope="module")
def small_sam() -> nn.Module:
    """SAM ViT-B from the package's registry, random weights, resized to INPUT_SIZE.

    segment-anything fixes the input at 1024 in its builder; the encoder's
    absolute position embedding is resized and the prompt encoder told the
    new sizes (its windowed and relative-position attention adapt by themselves).
    """
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    model = sam_model_registry["vit_b"](checkpoint=None)
    grid = INPUT_SIZE // 16
    encoder = model.image_encoder
    encoder.img_size = INPUT_SIZE
    resized = F.interpolate(encoder.pos_embed.permute(0, 3, 1, 2), size=(grid, grid), mode="bilinear")
    encoder.pos_embed = nn.Parameter(resized.permute(0, 2, 3, 1))
    model.prompt_encoder.image_embedding_size = (grid, grid)
    model.prompt_encoder.input_image_size = (INPUT_SIZE, INPUT_SIZE)
    model.prompt_encoder.mask_input_size = (4 * grid, 4 * grid)
    return model.eval()


def make_generator(family: str, request: pytest.FixtureRequest, **options) -> SAM2Generator | SAMGenerator:
    """A generator of ``family`` on the small model, with the defaults overridden by ``options``."""
    if family == "sam2":
        if not HAS_SAM2:
            pytest.skip("sam2 is not installed (optional [sam] extra; make install)")
        generator = SAM2Generator(request.getfixturevalue("small_sam2"), points_per_side=3, **options)
        # sam2's image predictor hard-codes the feature sizes of a 1024-pixel input.
        generator.generator.predictor._bb_feat_sizes = [(INPUT_SIZE // s, INPUT_SIZE // s) for s in (4, 8, 16)]
        return generator
    if not HAS_SAM:
        pytest.skip("segment-anything is not installed (optional [sam] extra; make install)")
    return SAMGenerator(request.getfixturevalue("small_sam"), points_per_side=3, **options)


FAMILIES = ["sam2", "sam"]


def test_postprocess_drops_empty_masks_sorts_caps_and_recomputes_boxes():
    masks = torch.zeros((4, 6, 8), dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[2, :, 5] = True
    masks[2, 0, 0] = True  # two separate columns: the projection box differs from the min/max box
    masks[3, 4:6, 2:7] = True
    given = Proposals(masks, torch.zeros((4, 4)), torch.tensor([0.5, 0.99, 0.9, 0.5]))

    result = postprocess(given)
    assert result.scores.tolist() == pytest.approx([0.9, 0.5, 0.5])  # the empty 0.99 mask is gone
    assert torch.equal(result.masks, masks[[2, 0, 3]])  # equal scores keep their order
    assert torch.equal(result.boxes, projection_boxes(masks[[2, 0, 3]]))
    assert result.boxes[0].tolist() == [1.5, -0.5, 3.5, 5.5]  # 2 columns around x = 2.5, 6 rows

    capped = postprocess(given, max_proposals=2)
    assert torch.equal(capped.masks, masks[[2, 0]])
    assert len(postprocess(given.select(torch.tensor([1])))) == 0
    with pytest.raises(InputError, match="max_proposals must be at least 1"):
        postprocess(given, max_proposals=0)


def test_postprocess_can_keep_the_generators_order():
    """SPEC-hybridgl section 2: HybridGL takes the masks in the order the generator returns them."""
    masks = torch.zeros((5, 6, 8), dtype=torch.bool)
    for index in (0, 2, 3, 4):
        masks[index, index, : index + 1] = True  # mask 1 stays empty
    given = Proposals(masks, torch.zeros((5, 4)), torch.tensor([0.5, 0.99, 0.9, 0.7, 0.8]))

    kept = postprocess(given, keep_order=True)
    assert torch.equal(kept.masks, masks[[0, 2, 3, 4]]) and kept.scores.tolist() == pytest.approx([0.5, 0.9, 0.7, 0.8])
    assert torch.equal(kept.boxes, projection_boxes(masks[[0, 2, 3, 4]]))
    # The cap still keeps the best-scored masks (0.9, 0.8, 0.7), in the generator's order.
    assert torch.equal(postprocess(given, max_proposals=3, keep_order=True).masks, masks[[2, 3, 4]])
    assert torch.equal(postprocess(given, max_proposals=3).masks, masks[[2, 4, 3]])
    assert get_method("hybridgl").keep_proposal_order and not get_method("global-local").keep_proposal_order


@pytest.mark.parametrize("family", FAMILIES)
def test_proposals_at_image_size_with_spec_boxes_sorted_by_predicted_iou(family, request, image):
    generator = make_generator(family, request, **KEEP_ALL)
    proposals = generator.generate(image)

    assert isinstance(proposals, Proposals)
    assert len(proposals) >= 1
    assert proposals.masks.dtype == torch.bool and proposals.image_size == (HEIGHT, WIDTH)
    assert proposals.masks.flatten(1).any(dim=1).all()
    assert torch.equal(proposals.boxes, projection_boxes(proposals.masks))
    assert torch.all(proposals.scores[:-1] >= proposals.scores[1:])
    # Every non-empty mask the package generator found, scored by its predicted IoU, nothing else.
    records = [r for r in generator.generator.generate(image.copy()) if r["segmentation"].any()]
    expected = sorted((r["predicted_iou"] for r in records), reverse=True)
    assert proposals.scores.tolist() == pytest.approx(expected)
    assert sorted(int(m.sum()) for m in proposals.masks) == sorted(int(r["segmentation"].sum()) for r in records)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_order_hands_on_the_packages_order(family, request, image):
    # The packages return their box-NMS order, which is by predicted IoU except after the small-region
    # clean-up (unchanged masks first); that the option reorders nothing is the postprocess test's.
    generator = make_generator(family, request, keep_order=True, **KEEP_ALL)
    proposals = generator.generate(image)
    records = [r for r in generator.generator.generate(image.copy()) if r["segmentation"].any()]
    assert torch.equal(proposals.masks, torch.from_numpy(np.stack([r["segmentation"] for r in records])))
    assert generator.settings["keep_order"] is True  # part of the proposal cache key and the run's configuration
    assert "keep_order" not in make_generator(family, request, **KEEP_ALL).settings


@pytest.mark.parametrize("family", FAMILIES)
def test_a_box_prompt_is_the_package_predictors_own_mask(family, request, image):
    """The VLM box preset's fallback: the generator's model prompted with a box, as the package's predictor does."""
    generator = make_generator(family, request)
    box = [20.0, 8.0, 70.0, 50.0]
    mask = generator.segment_box(image, box)
    predictor = generator.generator.predictor
    predictor.set_image(image)
    expected, _, _ = predictor.predict(box=np.array(box, dtype=np.float32), multimask_output=False)
    assert mask.dtype == torch.bool and mask.shape == (HEIGHT, WIDTH)
    assert torch.equal(mask, torch.from_numpy(np.asarray(expected[0]) > 0))


@pytest.mark.parametrize("family", FAMILIES)
def test_max_proposals_keeps_the_best(family, request, image):
    everything = make_generator(family, request, **KEEP_ALL).generate(image)
    assert len(everything) >= 2
    best = make_generator(family, request, max_proposals=1, **KEEP_ALL).generate(image)
    assert len(best) == 1
    assert torch.equal(best.masks[0], everything.masks[0]) and best.scores[0] == everything.scores[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_found_is_an_empty_set(family, request, image):
    proposals = make_generator(family, request, **KEEP_NONE).generate(image)
    assert len(proposals) == 0
    assert proposals.masks.shape == (0, HEIGHT, WIDTH)
    assert proposals.boxes.shape == (0, 4) and proposals.scores.shape == (0,)


@needs_sam2
@needs_cv2
def test_small_region_removal_runs_quietly_on_cpu(request, image):
    """min_mask_region_area > 0 goes through OpenCV, and sam2's per-batch CUDA-extension warning is held back."""
    generator = make_generator("sam2", request, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                               min_mask_region_area=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proposals = generator.generate(image)
    assert not [w for w in caught if "post-processing" in str(w.message) or "jit.script" in str(w.message)]
    assert proposals.image_size == (HEIGHT, WIDTH)
    assert proposals.masks.flatten(1).any(dim=1).all()


SETTINGS = {
    "points_per_side": 5,
    "pred_iou_thresh": 0.61,
    "stability_score_thresh": 0.62,
    "min_mask_region_area": 0,
    "box_nms_thresh": 0.55,
    "crop_n_layers": 1,
    "points_per_batch": 7,
}


def assert_generator_has(generator, settings: dict) -> None:
    package = generator.generator
    assert len(package.point_grids[0]) == settings["points_per_side"] ** 2
    assert len(package.point_grids) == settings["crop_n_layers"] + 1
    factor = settings.get("crop_n_points_downscale_factor", 1)
    for layer, grid in enumerate(package.point_grids):
        assert len(grid) == int(settings["points_per_side"] / factor**layer) ** 2
    for name in ("pred_iou_thresh", "stability_score_thresh", "min_mask_region_area", "box_nms_thresh",
                 "crop_n_layers"):
        assert getattr(package, name) == settings[name], name


@pytest.mark.parametrize("family", FAMILIES)
def test_settings_reach_the_package_generator(family, request):
    generator = make_generator(family, request, **{k: v for k, v in SETTINGS.items() if k != "points_per_side"})
    assert_generator_has(generator, {**SETTINGS, "points_per_side": 3})
    assert generator.generator.points_per_batch == 7


@needs_cv2
@pytest.mark.parametrize(("family", "cls"), [("sam2", SAM2Generator), ("sam", SAMGenerator)])
def test_defaults_are_the_paper_later_settings(family, cls, request):
    model = request.getfixturevalue("small_sam2" if family == "sam2" else "small_sam")
    assert_generator_has(cls(model), SAM_SETTINGS["paper-later"])
    assert SAM_SETTINGS["paper-later"] == {
        "points_per_side": 8, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.7,
        "min_mask_region_area": 800, "box_nms_thresh": 0.7, "crop_n_layers": 0, "crop_n_points_downscale_factor": 1,
    }


@needs_cv2
@pytest.mark.parametrize("family", FAMILIES)
def test_hybridgl_settings_are_the_spec_table(family, request):
    """SPEC-hybridgl section 2: the RefCOCO and PhraseCut columns, reaching the package generator."""
    assert SAM_SETTINGS["hybridgl"] == {
        "points_per_side": 8, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.7, "crop_n_layers": 0,
        "crop_n_points_downscale_factor": 1, "min_mask_region_area": 800, "box_nms_thresh": 0.7,
    }
    phrasecut = SAM_SETTINGS["hybridgl-phrasecut"]
    assert phrasecut == {
        "points_per_side": 64, "pred_iou_thresh": 0.86, "stability_score_thresh": 0.92, "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2, "min_mask_region_area": 100, "box_nms_thresh": 0.7,
    }
    generator = make_generator(family, request, **{k: v for k, v in phrasecut.items() if k != "points_per_side"})
    assert_generator_has(generator, {**phrasecut, "points_per_side": 3})
    # The crop layer's grid is the first one's divided by the factor: int(3 / 2) = 1 point per side.
    assert len(generator.generator.point_grids[1]) == 1


@needs_sam2
def test_builder_starts_from_named_settings_and_applies_overrides():
    generator = build_proposal_generator(
        "sam2", model="tiny", weights="random", settings="sam2-default", points_per_side=4, crop_n_layers=None,
        max_proposals=5,
    )
    assert isinstance(generator, SAM2Generator)
    assert_generator_has(generator, {**SAM_SETTINGS["sam2-default"], "points_per_side": 4})
    assert generator.max_proposals == 5
    assert generator.settings["model"] == "tiny"
    assert generator.generator.predictor.model.image_size == 1024  # the package's own hiera-tiny


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"points_per_side": 0}, "points_per_side must be at least 1"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh must be in [0, 1]"),
        ({"stability_score_thresh": -0.1}, "stability_score_thresh must be in [0, 1]"),
        ({"box_nms_thresh": 0.0}, "box_nms_thresh must be in (0, 1]"),
        ({"min_mask_region_area": -1}, "min_mask_region_area must be at least 0"),
        ({"crop_n_layers": -1}, "crop_n_layers must be at least 0"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor must be at least 1"),
        ({"max_proposals": 0}, "max_proposals must be at least 1"),
        ({"settings": "best"}, "unknown SAM settings 'best'"),
        ({"score_threshold": 0.2}, "score_threshold does not apply to sam2"),
    ],
)
def test_bad_options_are_refused_before_any_model_loads(options, message):
    start = time.perf_counter()
    with pytest.raises(InputError) as error:
        build_proposal_generator("sam2", model="no-such-model", **options)
    assert message in str(error.value)
    assert time.perf_counter() - start < 1


def test_builder_hands_freesolo_its_own_options(monkeypatch):
    freesolo = pytest.importorskip("globallocal.proposals.freesolo", reason="no FreeSOLO in this checkout")
    calls = []
    monkeypatch.setattr(freesolo, "build_freesolo", lambda **kwargs: calls.append(kwargs) or "generator")
    made = build_proposal_generator(
        "freesolo", weights="w.pth", device="cpu", max_proposals=7, score_threshold=0.2, min_area=None
    )
    assert made == "generator"
    assert calls == [{"weights": "w.pth", "device": "cpu", "max_proposals": 7, "score_threshold": 0.2,
                      "precision": "fp32"}]


def test_builder_refuses_unknown_kinds_and_sam_options_for_freesolo():
    with pytest.raises(InputError, match="unknown proposal source 'sam4'; use freesolo, sam2, sam, sam3"):
        build_proposal_generator("sam4")
    with pytest.raises(InputError, match="points_per_side applies to SAM proposals, not FreeSOLO"):
        build_proposal_generator("freesolo", points_per_side=8)


@needs_sam2
def test_missing_sam2_weights_offline_fail_fast_naming_model_and_place(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(WeightsError) as error:
        build_proposal_generator("sam2", model="tiny")
    assert time.perf_counter() - start < 10
    message = str(error.value)
    for part in ("SAM 2 tiny", "sam2.1_hiera_tiny.pt", "facebook/sam2.1-hiera-tiny", "HF_HUB_OFFLINE",
                 "hf download facebook/sam2.1-hiera-tiny sam2.1_hiera_tiny.pt", "--sam-weights"):
        assert part in message
    assert "\n" not in message


@needs_sam
def test_missing_sam_weights_fail_fast_with_the_official_address(tmp_path, monkeypatch):
    monkeypatch.setattr(sam_module, "default_sam_weights_dirs", lambda: [tmp_path])
    start = time.perf_counter()
    with pytest.raises(WeightsError) as error:
        build_proposal_generator("sam", model="vit_b")
    assert time.perf_counter() - start < 10
    message = str(error.value)
    for part in ("SAM vit_b", "sam_vit_b_01ec64.pth", f"{SAM_WEIGHTS_URL}sam_vit_b_01ec64.pth", str(tmp_path),
                 "--sam-weights"):
        assert part in message
    with pytest.raises(WeightsError, match=r"file not found: .*nowhere\.pth.*sam_vit_h_4b8939\.pth"):
        load_sam("vit_h", tmp_path / "nowhere.pth")


@needs_sam2
def test_sam2_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(1)
    reference = load_sam2("tiny", "random")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": reference.state_dict()}, path)  # the layout of the released files
    loaded = load_sam2("tiny", path)
    name, tensor = next(iter(reference.state_dict().items()))
    assert torch.equal(loaded.state_dict()[name], tensor)

    incomplete = {key: value for key, value in reference.state_dict().items() if key != name}
    torch.save({"model": incomplete}, path)
    with pytest.raises(WeightsError, match=rf"not the SAM 2 tiny checkpoint: 1 missing \({re.escape(name)}\)$"):
        load_sam2("tiny", path)
    torch.save({"model": {**incomplete, name: tensor.long()}}, path)  # would have been cast to float silently
    with pytest.raises(WeightsError, match=rf"tiny checkpoint: 1 of the wrong dtype \({re.escape(name)} int64 instead "
                                           r"of floating\)$"):
        load_sam2("tiny", path)
    # An original SAM file: SAM 2 takes none, so the hint switches the source too (--sam-model alone is refused).
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 768)}, path)
    with pytest.raises(WeightsError, match=r"it looks like original SAM vit_b: pass --proposals sam --sam-model "
                                           r"vit_b$"):
        load_sam2("tiny", path)


@needs_sam
def test_wrong_sam_checkpoint_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsError, match=r"other\.pth is not the SAM vit_b checkpoint: \d+ missing \(.*\); "
                                           r"1 unexpected \(head\.weight\)$"):
        load_sam("vit_b", path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read SAM vit_b weights .*: not a PyTorch checkpoint"):
        load_sam("vit_b", path)
    # Another size of SAM is named by its image encoder's width, as a CLIP file of another shape is.
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 1280)}, path)
    with pytest.raises(WeightsError, match=r"not the SAM vit_b checkpoint: .*; it looks like original SAM vit_h: pass "
                                           r"--sam-model vit_h$"):
        load_sam("vit_b", path)


SAM2_MODULES = ["sam2", "sam2.build_sam", "sam2.automatic_mask_generator"]


@pytest.mark.parametrize(
    ("modules", "build"),
    [
        (SAM2_MODULES, lambda: SAM2Generator(None, min_mask_region_area=0)),
        (SAM2_MODULES, lambda: load_sam2("tiny", "random")),
        (["segment_anything"], lambda: SAMGenerator(None, min_mask_region_area=0)),
        (["segment_anything"], lambda: build_proposal_generator("sam", weights="random")),
    ],
)
def test_missing_package_says_how_to_install(monkeypatch, modules, build):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(InputError) as error:
        build()
    message = str(error.value)
    assert "pip install --no-build-isolation -e '.[sam]'" in message and "make install" in message
    assert "\n" not in message


def test_small_region_removal_without_opencv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(InputError, match="min_mask_region_area 800 needs OpenCV.*make install"):
        SAMGenerator(None)
