"""The pictures' text and sizes: captions in fonts that cover the phrase, shortened phrases that keep their
score, tiny photos scaled up, distinct outlines for phrases that pick one mask, a captioned heatmap."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from globallocal.data import fonts as fonts_module
from globallocal.data.fonts import fonts
from globallocal.outputs.drawing import PALETTE, SHOWN_WIDTH, answer_picture, answers_picture, top_k_picture

DEBIAN_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
MISSING = "\U0010ffff"  # a noncharacter: no font has it, every font draws its box
needs_a_font = pytest.mark.skipif(not fonts_module.font_paths(), reason="no TrueType font installed")


@pytest.fixture
def fresh_search():
    """Font look-ups redone for the test, and redone again after it (they are cached per process)."""
    fonts_module.font_paths.cache_clear()
    yield
    fonts_module.font_paths.cache_clear()


def _drawn(text: str, size: int = 24) -> np.ndarray:
    image = Image.new("RGB", (200, 2 * size), (255, 255, 255))
    fonts(size).draw(image, (4, 4), text, (0, 0, 0))
    return np.asarray(image)


def _band(picture: np.ndarray, photo_height: int) -> np.ndarray:
    return picture[photo_height:]


@needs_a_font
@pytest.mark.parametrize("char", ["é", "à", "ж", "Ω", "😀"])
def test_letters_beyond_ascii_are_drawn_with_a_glyph_not_a_box(char):
    assert not np.array_equal(_drawn(char), _drawn(MISSING)), f"{char!r} drawn as the missing-glyph box"


@pytest.mark.skipif(not DEBIAN_DEJAVU.is_file(), reason="DejaVu Sans not installed (Debian: fonts-dejavu-core)")
def test_the_caption_of_l_homme_a_droite_is_drawn_in_dejavu(fresh_search):
    assert fonts_module.font_paths()[0] == DEBIAN_DEJAVU
    expected = Image.new("RGB", (200, 48), (255, 255, 255))
    ImageDraw.Draw(expected).text((4, 4), "é", font=ImageFont.truetype(str(DEBIAN_DEJAVU), 24), fill=(0, 0, 0))
    assert np.array_equal(_drawn("é"), np.asarray(expected))
    photo = Image.new("RGB", (400, 50), (128, 128, 128))
    mask = np.zeros((50, 400), dtype=bool)
    captions = ["'l'homme à droite': proposal 0, score 0.5000", f"'l'homme {MISSING} droite': proposal 0, score 0.5000"]
    accented, boxed = (answer_picture(photo, mask, caption)[50:] for caption in captions)
    assert not np.array_equal(accented, boxed)


def _has_cjk() -> bool:
    return any(fonts_module._has_glyph(path, "人") for path in fonts_module.font_paths())


@pytest.mark.skipif(not _has_cjk(), reason="no CJK font installed (Debian: fonts-noto-cjk)")
def test_cjk_is_drawn_with_a_cjk_font():
    assert fonts(24).face_for("人") is not fonts(24).faces[0]
    assert not np.array_equal(_drawn("右边的男人"), _drawn(MISSING * 5))


@needs_a_font
def test_a_character_no_font_has_is_drawn_as_the_first_fonts_box():
    assert fonts(24).face_for(MISSING) is fonts(24).faces[0]
    assert (_drawn(MISSING) < 128).any()  # the box, not nothing


def test_without_any_truetype_font_pillows_own_draws_the_caption(monkeypatch):
    monkeypatch.setattr(fonts_module, "font_paths", lambda: ())
    assert fonts(24).faces[0].path is None
    photo = Image.new("RGB", (400, 50), (128, 128, 128))
    picture = answer_picture(photo, np.zeros((50, 400), dtype=bool), "'l'homme à droite 人 😀': proposal 0, score 0.5")
    assert picture.shape[1] == 400 and (_band(picture, 50)[:, 24:] < 128).any()  # text after the swatch


@needs_a_font
def test_a_file_that_is_not_a_font_is_passed_over(monkeypatch, tmp_path, fresh_search):
    broken = tmp_path / "Broken.ttf"  # a name no system font has: Pillow would load that font instead
    broken.write_bytes(b"not a font")
    real = fonts_module.font_paths()  # found before the test's places replace the usual ones
    monkeypatch.setattr(fonts_module, "_DEJAVU", (broken, *(real[:1])))
    fonts_module.font_paths.cache_clear()
    assert broken not in fonts_module.font_paths()
    assert fonts_module.font_paths()[:1] == real[:1]


@pytest.mark.skipif(shutil.which("fc-match") is None or not DEBIAN_DEJAVU.is_file(),
                    reason="needs fontconfig and DejaVu Sans")
def test_fontconfig_finds_dejavu_where_the_usual_places_hold_none(monkeypatch, fresh_search):
    monkeypatch.setattr(fonts_module, "_DEJAVU", ())
    monkeypatch.setattr(fonts_module, "_matplotlib_dejavu", lambda: [])
    assert fonts_module.font_paths()[0].name == "DejaVuSans.ttf"


@needs_a_font
def test_a_long_phrase_is_shortened_and_the_score_shown_whole():
    photo = Image.new("RGB", (200, 100), (128, 128, 128))
    mask = np.zeros((100, 200), dtype=bool)
    caption = f"'{'x' * 300}': proposal 12, score 0.1234"
    picture = answer_picture(photo, mask, caption)
    height = round(100 * SHOWN_WIDTH / 200)
    band = _band(picture, height)
    size = 12  # the captions' smallest size, which a picture SHOWN_WIDTH wide gets
    left = size // 2 + size + size // 2  # after the swatch
    shown = fonts(size).fit(caption, SHOWN_WIDTH - left - size // 2)
    assert shown.endswith("x…': proposal 12, score 0.1234") and shown.startswith("'xxx")
    assert fonts(size).length(shown) <= SHOWN_WIDTH - left - size // 2
    ink = np.flatnonzero((band < 100).all(axis=2).any(axis=0))
    assert ink.max() < SHOWN_WIDTH - size // 2  # nothing drawn into the right margin
    drawn = Image.new("RGB", (SHOWN_WIDTH, band.shape[0]), (255, 255, 255))
    fonts(size).draw(drawn, (left, size // 4), shown, (0, 0, 0))
    assert np.array_equal(band[:, left:], np.asarray(drawn)[:, left:])  # the band shows exactly that text


def test_a_short_caption_is_left_alone():
    assert fonts(12).fit("'the dog': proposal 1, score 0.5000", 1000) == "'the dog': proposal 1, score 0.5000"
    assert fonts(12).fit("no separator " * 20, 100).endswith("…")


def test_a_tiny_photo_is_drawn_scaled_up_like_the_top_k_tiles():
    photo = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3))
    mask = np.zeros((30, 40), dtype=bool)
    mask[10:20, 5:15] = True
    before = mask.copy()
    picture = answer_picture(photo, mask, "'the square': proposal 0, score 0.5000")
    assert picture.shape[1] == SHOWN_WIDTH and picture.shape[0] > 240
    tile = top_k_picture(photo, mask[None], [(0, 0.5)], "the square", k=1)
    assert tile.shape[1] == SHOWN_WIDTH
    # The same tinted photo in both: one scaling rule.
    assert np.array_equal(picture[:240], tile[:240])
    assert np.array_equal(mask, before)  # the mask itself is not scaled
    everything = answers_picture(photo, [mask], ["'the square': proposal 0, score 0.5000"])
    assert everything.shape[1] == SHOWN_WIDTH


def test_a_tall_thin_photo_is_scaled_up_less_and_its_caption_still_fits():
    photo = Image.new("RGB", (10, 1000), (128, 128, 128))
    picture = answer_picture(photo, np.zeros((1000, 10), dtype=bool), "'the pole': proposal 0, score 0.5000")
    assert picture.shape[1] == SHOWN_WIDTH and picture.shape[0] < 2048 + 100


def _pure(picture: np.ndarray, color) -> np.ndarray:
    return (picture == np.array(color, dtype=np.uint8)).all(axis=2)


def test_phrases_that_pick_one_mask_get_distinct_outlines():
    photo = Image.new("RGB", (320, 200), (128, 128, 128))
    mask = np.zeros((200, 320), dtype=bool)
    mask[50:150, 100:220] = True
    picture = answers_picture(photo, [mask, mask], ["'a': proposal 0, score 0.5", "'b': proposal 0, score 0.4"])
    row = picture[100]
    first, second = (np.flatnonzero(_pure(row[None], color)[0]) for color in PALETTE[:2])
    assert first.size and second.size
    assert first.min() > second.min() and first.max() < second.max()  # the second outline outside the first
    legend = picture[200:]
    for color in PALETTE[:2]:  # both captions, each after its swatch
        assert _pure(legend, color).any(), color


def test_the_heatmap_carries_the_phrase():
    from globallocal.outputs.heatmap import heatmap

    photo = Image.new("RGB", (320, 40), (128, 128, 128))
    soft = np.zeros((40, 320), dtype=np.float32)
    plain, captioned = heatmap(photo, soft), heatmap(photo, soft, caption="'the man': soft mask")
    assert captioned.shape[0] > plain.shape[0]
    band = captioned[40:captioned.shape[0] - (plain.shape[0] - 40)]
    assert (band < 100).all(axis=2).any()
    assert np.array_equal(captioned[-(plain.shape[0] - 40):], plain[40:])  # the legend below the caption
