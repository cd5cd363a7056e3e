"""Decoding odd images, and atomic PNG output."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from globallocal.data.images import (
    PhotoReading,
    load_image,
    load_mask,
    photo_reading,
    save_mask_png,
    short_side_size,
    x800,
)
from globallocal.errors import ImageError
from globallocal.proposals import Proposals, check_image_size


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (40, 30), 128),
        lambda: Image.new("RGBA", (40, 30), (10, 20, 30, 0)),
        lambda: Image.new("P", (40, 30), 3),
        lambda: Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
        lambda: Image.new("1", (40, 30), 1),
        lambda: Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)),
    ],
    ids=["grey", "rgba", "palette", "cmyk", "bilevel", "grey16"],
)
def test_modes_become_8bit_rgb(tmp_path, make):
    image = make()
    suffix = ".jpg" if image.mode == "CMYK" else ".png"
    path = _save(image, tmp_path / f"odd{suffix}")
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    assert rgb.size == (40, 30)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    array = np.zeros((4, 4), dtype=np.uint16)
    array[0, 0] = 65535
    array[0, 1] = 32896  # 128.5 * 256: about mid-grey
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    values = np.asarray(load_image(path))[..., 0]
    assert values[0, 0] == 255 and 127 <= values[0, 1] <= 129 and values[1, 1] == 0


def _turned_photo(path, orientation=6):
    """A 40x20 photo whose top left pixel is red, stored with an EXIF orientation (6: a quarter turn clockwise)."""
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(array), path, exif=exif)


def test_exif_orientation_is_applied_and_said(tmp_path):
    path = _turned_photo(tmp_path / "rotated.png")
    photo = load_image(path)
    # Turned a quarter clockwise, as a viewer shows it: the stored top left corner is now the top right.
    assert photo.size == (20, 40) and tuple(np.asarray(photo)[0, 19]) == (255, 0, 0)
    assert photo_reading(photo) == PhotoReading(exif_orientation=6, frames=1)
    assert photo_reading(photo).to_json() == {"exif_orientation": 6, "frames": 1}
    # Read again (a segmenter given the decoded photo): not turned twice, the reading kept.
    again = load_image(photo)
    assert again.size == (20, 40) and photo_reading(again) == photo_reading(photo)
    # A Pillow image opened by the caller is turned too; an array has no tag.
    assert photo_reading(load_image(Image.open(path))).exif_orientation == 6
    assert photo_reading(load_image(np.zeros((2, 3, 3), dtype=np.uint8))) == PhotoReading(None, 1)
    plain = _save(Image.new("RGB", (4, 2)), tmp_path / "plain.png")
    assert photo_reading(load_image(plain)).to_json() == {"exif_orientation": None, "frames": 1}


def test_masks_of_the_stored_size_of_a_turned_photo_name_the_exif_orientation(tmp_path):
    photo = load_image(_turned_photo(tmp_path / "rotated.jpg"))  # 20 wide, 40 high as shown
    stored = np.zeros((20, 40), dtype=np.uint8)  # a mask made on the pixels as stored: 40 wide, 20 high
    Image.fromarray(stored).save(tmp_path / "mask.png")
    with pytest.raises(ImageError, match=r"mask mask\.png is 40x20 but the image is 20x40; .*EXIF orientation"):
        load_mask(tmp_path / "mask.png", (photo.height, photo.width))
    with pytest.raises(Exception, match=r"masks are 40x20 but the image is 20x40; .*EXIF orientation"):
        check_image_size(photo, Proposals.from_masks(torch.zeros((1, 20, 40), dtype=torch.bool)))
    with pytest.raises(Exception, match=r"masks are 30x20 but the image is 20x40; masks must be at the image's size$"):
        check_image_size(photo, Proposals.from_masks(torch.zeros((1, 20, 30), dtype=torch.bool)))


def test_an_animated_gif_is_read_from_its_first_frame_with_a_warning(tmp_path):
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "moving.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.warns(UserWarning, match=r"moving\.gif holds 3 frames .*only the first is segmented"):
        photo = load_image(path)
    assert tuple(np.asarray(photo)[0, 0]) == (255, 0, 0)
    assert photo_reading(photo).to_json() == {"exif_orientation": None, "frames": 3}


def test_an_undecodable_file_is_named_with_the_formats_read(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert str(caught.value) == (f"cannot decode image {path}: not a picture format this reads; give a JPEG, PNG, "
                                 "WebP, TIFF, BMP or GIF photo")


def test_truncated_jpeg(tmp_path, copy_example):
    source = copy_example("img_44266.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(ImageError, match="cannot decode image"):
        load_image(broken)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match="cannot decode image"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_short_side_rule():
    assert short_side_size(480, 640) == (800, 1066)  # floor(800 * 640 / 480)
    assert short_side_size(640, 427) == (1199, 800)
    assert short_side_size(1, 1) == (800, 800)


def test_x800_values():
    image = Image.new("RGB", (8, 4), (255, 0, 128))
    tensor = x800(image, short=8)
    assert tensor.shape == (3, 8, 16)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(tensor[:, 0, 0], expected)


def test_mask_png_round_trip(tmp_path):
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    save_mask_png(mask, tmp_path / "m.png")
    written = Image.open(tmp_path / "m.png")
    assert written.mode == "L" and written.size == (7, 5)
    assert set(np.unique(np.asarray(written))) == {0, 255}
    assert (load_mask(tmp_path / "m.png") == mask).all()
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temporary file left behind


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.png"
    save_mask_png(np.ones((2, 2), dtype=bool), path)
    before = path.read_bytes()

    def explode(self, fp, format=None, **params):
        fp.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError):
        save_mask_png(np.zeros((2, 2), dtype=bool), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_rgba_cutout_mask(tmp_path):
    cutout = np.zeros((4, 4, 4), dtype=np.uint8)
    cutout[..., :3] = 200  # colour everywhere
    cutout[1:3, 1:3, 3] = 255  # opaque only in the middle
    path = tmp_path / "cutout.png"
    Image.fromarray(cutout, "RGBA").save(path)
    assert load_mask(path).sum() == 4


def test_array_input():
    assert load_image(np.zeros((3, 5, 3), dtype=np.uint8)).size == (5, 3)
    with pytest.raises(ImageError):
        load_image(np.zeros((3, 5), dtype=np.float32))
    assert load_image(Image.open(io.BytesIO(_png_bytes()))).mode == "RGB"


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("LA", (3, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from globallocal.data.images import save_text
    from globallocal.runs.cache_stores import _write_npz

    previous = os.umask(0o027)
    try:
        save_text("hello\n", tmp_path / "a.txt")
        _write_npz(tmp_path / "b.npz", {"x": np.zeros(3)})
    finally:
        os.umask(previous)
    for name in ("a.txt", "b.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # 0666 minus the umask, not 0600
