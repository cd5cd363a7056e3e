"""The one home of the pictures' fonts: DejaVu Sans, then fonts for what it lacks, chosen per character.

Pillow's built-in font lacks most letters beyond ASCII (even "é"), so every picture draws its text with
TrueType fonts found on the machine once: DejaVu Sans (Latin, Greek, Cyrillic, many symbols and emoticons),
then a CJK font and a colour emoji font where installed. Each character is drawn with the first of them that
has a glyph for it; one that none has is drawn with the first font's box. With no TrueType font at all, the
text is drawn with Pillow's built-in font.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_WINDOWS = Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts"
_HOME = Path.home() / "Library" / "Fonts"
# Where Debian/Ubuntu, Fedora, Arch, Homebrew, macOS and Windows keep each font, in the order tried.
_DEJAVU = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf", "/opt/homebrew/share/fonts/DejaVuSans.ttf",
    _HOME / "DejaVuSans.ttf", "/Library/Fonts/DejaVuSans.ttf", _WINDOWS / "DejaVuSans.ttf",
)
_CJK = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/Hiragino Sans GB.ttc", "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    _WINDOWS / "msyh.ttc", _WINDOWS / "msgothic.ttc",
)
_EMOJI = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf", "/System/Library/Fonts/Apple Color Emoji.ttc",
    _WINDOWS / "seguiemj.ttf",
)
# Colour emoji fonts are bitmaps that FreeType loads only at the sizes they hold (Noto's 109, Apple's 160):
# their glyphs are drawn at that size and scaled to the text's.
_BITMAP_SIZES = (109, 160)
# No font maps this noncharacter: it renders as the font's .notdef glyph, the one a missing character gets.
_MISSING = "\U0010ffff"
_PROBE_SIZE = 32


def _loads(path: Path) -> bool:
    try:
        _probe_font(path)
    except OSError:  # not a font Pillow can read
        return False
    return True


def _first(paths: Sequence[str | Path]) -> Path | None:
    return next((Path(p) for p in paths if Path(p).is_file() and _loads(Path(p))), None)


def _matplotlib_dejavu() -> list[Path]:
    """matplotlib's copy of DejaVu Sans, found without importing matplotlib (slow, and only maybe installed)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return []
    return [Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"]


def _fc_match(pattern: str) -> list[Path]:
    """The file fontconfig picks for ``pattern`` (its best match, which may lack the wanted script: each
    character is checked anyway)."""
    command = shutil.which("fc-match")
    if command is None:
        return []
    try:
        found = subprocess.run([command, "--format=%{file}", pattern], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(found.stdout.strip())] if found.returncode == 0 and found.stdout.strip() else []


@cache
def font_paths() -> tuple[Path, ...]:
    """The TrueType fonts every picture draws with, best first: DejaVu Sans, a CJK font, a colour emoji font
    (those found; fontconfig asked only when the well-known places hold none)."""
    chosen = [
        _first(_DEJAVU) or _first(_matplotlib_dejavu()) or _first(_fc_match("DejaVu Sans")),
        _first(_CJK) or _first(_fc_match(":lang=zh")),
        _first(_EMOJI) or _first(_fc_match("emoji")),
    ]
    return tuple(dict.fromkeys(path for path in chosen if path is not None))


@cache
def _probe_font(path: Path) -> ImageFont.FreeTypeFont:
    """``path`` at a size it can be drawn at: any for an outline font, its own for a bitmap one."""
    try:
        return ImageFont.truetype(str(path), _PROBE_SIZE)
    except OSError:
        for size in _BITMAP_SIZES:
            try:
                return ImageFont.truetype(str(path), size)
            except OSError:
                continue
        raise


def _rendering(font: ImageFont.FreeTypeFont, text: str) -> tuple:
    mask = font.getmask(text)
    return mask.size, bytes(mask), font.getlength(text)


@cache
def _has_glyph(path: Path, char: str) -> bool:
    """Whether the font draws ``char`` otherwise than the .notdef glyph of a missing character (Pillow shows
    no character map; a glyph drawn exactly like .notdef is one only a box-shaped character could have)."""
    font = _probe_font(path)
    return _rendering(font, char) != _rendering(font, _MISSING)


def _joins_previous(char: str) -> bool:
    """Combining marks, variation selectors and joiners, which belong with the character before them."""
    return unicodedata.combining(char) > 0 or unicodedata.category(char) in ("Mn", "Me", "Cf")


@dataclass(frozen=True)
class _Face:
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    scale: float  # drawn size / loaded size: 1 except for a bitmap font
    path: Path | None  # None: Pillow's built-in font


def _face(path: Path, size: int) -> _Face:
    try:
        return _Face(ImageFont.truetype(str(path), size), 1.0, path)
    except OSError:
        font = _probe_font(path)
        return _Face(font, size / font.size, path)


class Fonts:
    """The found fonts at one size, measuring and drawing text character by character (see the module)."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        faces = [_face(path, size) for path in paths]
        self.faces = faces or [_Face(ImageFont.load_default(size=size), 1.0, None)]
        self.ascent = _ascent(self.faces[0])

    @property
    def primary(self) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        """The first font alone, for text known to be Latin (numbers, names of settings)."""
        return self.faces[0].font

    def face_for(self, char: str) -> _Face:
        """The first face with a glyph for ``char``, else the first face (its box)."""
        if len(self.faces) == 1:
            return self.faces[0]
        return next((face for face in self.faces if _has_glyph(face.path, char)), self.faces[0])

    def runs(self, text: str) -> list[tuple[_Face, str]]:
        """``text`` cut into pieces drawn with one face each."""
        runs: list[tuple[_Face, str]] = []
        for char in text:
            face = runs[-1][0] if runs and _joins_previous(char) else self.face_for(char)
            if runs and runs[-1][0] is face:
                runs[-1] = (face, runs[-1][1] + char)
            else:
                runs.append((face, char))
        return runs

    def length(self, text: str) -> float:
        """The drawn width of ``text`` in pixels."""
        return sum(face.font.getlength(run) * face.scale for face, run in self.runs(text))

    def draw(self, image: Image.Image, xy: tuple[float, float], text: str, fill: Sequence[int]) -> None:
        """``text`` on ``image`` (RGB) with its top-left corner at ``xy``, every face on one baseline."""
        x, top = xy
        baseline = top + self.ascent
        draw = ImageDraw.Draw(image)
        for face, run in self.runs(text):
            if face.scale == 1.0:
                # Colour glyphs in their colours (a COLR emoji font); Pillow's own font has none.
                draw.text((x, baseline - _ascent(face)), run, font=face.font, fill=tuple(fill),
                          embedded_color=face.path is not None)
            else:
                _paste_scaled(image, (x, baseline), run, face)
            x += face.font.getlength(run) * face.scale

    def fit(self, text: str, width: float) -> str:
        """``text`` shortened with "…" to fit ``width`` pixels.

        A caption reads "PHRASE: DETAIL" (the detail, e.g. the score, holds no ": "): the phrase is shortened,
        inside its quotes, and the detail kept whole. Text without ": " is shortened at its end.
        """
        if self.length(text) <= width:
            return text
        head, separator, tail = text.rpartition(": ")
        if not separator:
            head, tail = text, ""
        quote = head[-1] if len(head) >= 2 and head[0] in "'\"" and head[-1] == head[0] else ""
        body = head[len(quote):len(head) - len(quote)]

        def shortened(keep: int) -> str:
            return f"{quote}{body[:keep].rstrip()}…{quote}{separator}{tail}"

        low, high = 0, len(body)  # the longest prefix that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self.length(shortened(middle)) <= width else (low, middle - 1)
        return shortened(low)


def _ascent(face: _Face) -> float:
    if not isinstance(face.font, ImageFont.FreeTypeFont):
        return 0.0  # a bitmap font without FreeType draws from its top
    return face.font.getmetrics()[0] * face.scale


def _paste_scaled(image: Image.Image, origin: tuple[float, float], run: str, face: _Face) -> None:
    """A bitmap font's glyphs drawn at their own size, scaled to the text's and laid on its baseline."""
    ascent, descent = face.font.getmetrics()
    canvas = Image.new("RGBA", (max(1, math.ceil(face.font.getlength(run))), ascent + descent), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), run, font=face.font, embedded_color=True)
    size = (max(1, round(canvas.width * face.scale)), max(1, round(canvas.height * face.scale)))
    scaled = canvas.resize(size, Image.LANCZOS)
    image.paste(scaled, (round(origin[0]), round(origin[1] - ascent * face.scale)), scaled)


@cache
def _fonts(paths: tuple[Path, ...], size: int) -> Fonts:
    return Fonts(paths, size)


def fonts(size: int) -> Fonts:
    """The pictures' fonts at ``size`` pixels (found once, loaded once per size)."""
    return _fonts(font_paths(), size)
