"""The pictures the VLM sees: numbered marks, one candidate alone, its zoomed view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from globallocal.methods.vlm import render
from globallocal.methods.vlm.render import (
    FILL_ALPHA,
    ZOOM_SIDE,
    candidate_image,
    color_of,
    label_point,
    marks_image,
    zoom_image,
)

H, W = 120, 160
GREY = Image.new("RGB", (W, H), (128, 128, 128))


def box_mask(x0, y0, x1, y1, height=H, width=W):
    mask = torch.zeros((height, width), dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def tinted(color):
    return tuple(int(round((1 - FILL_ALPHA) * 128 + FILL_ALPHA * c)) for c in color)


def test_marks_tint_each_mask_in_its_colour_and_leave_the_rest():
    masks = torch.stack([box_mask(10, 10, 70, 100), box_mask(90, 20, 150, 60)])
    picture = np.asarray(marks_image(GREY, masks))
    assert picture.shape == (H, W, 3)
    # Away from the numbers (at the masks' centres) and the outlines: the tint.
    assert tuple(picture[95, 15]) == tinted(color_of(0))
    assert tuple(picture[55, 145]) == tinted(color_of(1))
    assert tuple(picture[110, 80]) == (128, 128, 128)
    # The outline: the mask's colour on its border, a dark line just outside.
    assert tuple(picture[50, 10]) == color_of(0) and tuple(picture[50, 9]) == (0, 0, 0)


def test_each_number_is_drawn_in_a_box_of_its_mask_colour_at_the_mask_centre():
    masks = torch.stack([box_mask(10, 10, 70, 100), box_mask(90, 20, 150, 60)])
    picture = np.asarray(marks_image(GREY, masks, numbers=[3, 7]))
    for index, mask in enumerate(masks):
        x, y = label_point(mask)
        patch = picture[y - 6:y + 7, x - 6:x + 7].reshape(-1, 3)
        assert color_of(index) in {tuple(pixel) for pixel in patch}  # the box's fill
        assert (patch.min(axis=1) > 180).any()  # the digit, white on these dark colours
    # Different numbers draw differently.
    assert not np.array_equal(picture, np.asarray(marks_image(GREY, masks, numbers=[4, 7])))


def test_the_label_point_is_the_deepest_pixel():
    assert label_point(box_mask(10, 20, 31, 41)) == (20, 30)
    ell = box_mask(0, 0, 10, 100) | box_mask(0, 90, 150, 100)
    x, y = label_point(ell)
    assert bool(ell[y, x])
    assert label_point(torch.zeros((5, 5), dtype=torch.bool)) == (0, 0)


def test_numbers_of_coincident_masks_do_not_cover_each_other():
    mask = box_mask(40, 30, 120, 90)
    boxes = []
    for _ in range(3):
        boxes.append(render._label_box(label_point(mask), (20, 16), (W, H), boxes))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not render._overlaps(a, [b])
        assert 0 <= a[0] and a[2] <= W and 0 <= a[1] and a[3] <= H


def test_one_candidate_alone_has_no_number():
    mask = box_mask(10, 10, 70, 100)
    picture = np.asarray(candidate_image(GREY, mask, color_of(2)))
    inside = picture[11:99, 11:69].reshape(-1, 3)
    assert {tuple(pixel) for pixel in inside} == {tinted(color_of(2))}
    assert tuple(picture[110, 100]) == (128, 128, 128)


@pytest.mark.parametrize("box, beside", [((60, 10, 70, 100), True), ((20, 50, 140, 60), False)])
def test_the_zoomed_view_enlarges_the_object_in_two_panels(box, beside):
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8))
    picture = zoom_image(photo, box_mask(*box), color_of(0))
    if beside:  # a tall object: panels side by side, each as tall as ZOOM_SIDE
        assert picture.height == ZOOM_SIDE and picture.width > ZOOM_SIDE // 2
    else:  # a wide one: one above the other, each as wide as ZOOM_SIDE
        assert picture.width == ZOOM_SIDE and picture.height > ZOOM_SIDE // 8
    pixels = np.asarray(picture)
    # The close-up panel is mostly the tinted object: its colour dominates somewhere, the photo alone never.
    red = pixels[..., 0].astype(int) - pixels[..., 1:].mean(axis=-1)
    assert (red > 60).mean() > 0.1


def test_the_zoomed_view_of_an_empty_mask_is_the_photo():
    picture = zoom_image(GREY, torch.zeros((H, W), dtype=torch.bool))
    assert max(picture.size) == ZOOM_SIDE
    assert (np.asarray(picture) == 128).all()


def test_a_grey_or_rgba_photo_is_drawn_in_rgb():
    mask = box_mask(10, 10, 70, 100)
    for mode in ("L", "RGBA"):
        photo = GREY.convert(mode)
        assert marks_image(photo, mask[None]).mode == "RGB"
        assert zoom_image(photo, mask).mode == "RGB"
