"""Reading images and masks, the shared input tensor, and atomic PNG output."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, InputError
from .bounded import MAX_PIXELS, PIXELS_VARIABLE, read_regular

if TYPE_CHECKING:
    import torch

ImageInput = str | os.PathLike | Image.Image | np.ndarray
# Renames that all_or_none() holds back until its block succeeds (None: rename at once).
_DEFERRED: ContextVar[list[tuple[str, Path]] | None] = ContextVar("deferred_renames", default=None)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A picture over MAX_PIXELS (data.bounded) is refused by its header, before any pixel is decoded (which also
# stops decompression bombs: Pillow's own check only warns below twice its limit).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A compressed file is smaller than its pixels (16-bit RGBA: 8 bytes each), plus room for metadata.
_BYTES_PER_PIXEL = 8
# The resized input (FreeSOLO's and CLIP's): the short side is bounded (data.bounded.MAX_SHORT_SIDE), and so is
# the long side of an elongated photo (a 4000x4 strip would become 800x800000): 8 times the paper's short side.
MAX_INPUT_SIDE = 6400


_RAISE_HINT = f"; memory grows with the pixels: resize the picture, or set {PIXELS_VARIABLE} to raise the limit"
PHOTO_FORMATS = "JPEG, PNG, WebP, TIFF, BMP or GIF"
"""The photo formats named in messages (Pillow reads more)."""
_ORIENTATION = 0x0112  # the EXIF tag of how the stored pixels are turned or mirrored for display
# Pillow's key in ``Image.info`` under which load_image leaves how it read a photo (PhotoReading).
_READING = "globallocal.photo"


@dataclass(frozen=True)
class PhotoReading:
    """How :func:`load_image` read a photo: turned as viewers show it, and which frame.

    ``exif_orientation``: the EXIF Orientation tag applied (1: the pixels as
    stored; 2 to 8: mirrored and/or turned, e.g. 6 = a quarter turn
    clockwise; None: the photo has none). ``frames``: the frames (an
    animation's, a multi-page TIFF's) the file holds; only the first is
    read. A phone's MPO photo counts 1: its other pictures are previews.
    """

    exif_orientation: int | None = None
    frames: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"exif_orientation": self.exif_orientation, "frames": self.frames}


def photo_reading(image: Image.Image) -> PhotoReading:
    """How :func:`load_image` read ``image`` (a plain reading for an image it did not read, e.g. an array)."""
    reading = image.info.get(_READING)
    return reading if isinstance(reading, PhotoReading) else PhotoReading()


def _reading_of(image: Image.Image, name: str) -> PhotoReading:
    """The orientation and frames of a photo about to be turned and read; warns when only its first frame is."""
    orientation = image.getexif().get(_ORIENTATION)
    frames = 1 if image.format == "MPO" else int(getattr(image, "n_frames", 1))
    if frames > 1:
        warnings.warn(f"{name} holds {frames} frames (an animation or pages); only the first is segmented",
                      stacklevel=3)
    return PhotoReading(orientation if orientation in range(1, 9) else None, frames)


def _with_reading(image: Image.Image, reading: PhotoReading) -> Image.Image:
    image.info[_READING] = reading
    return image


def wrong_size(subject: str, mask_size: tuple[int, int], image_size: tuple[int, int]) -> str:
    """'``subject`` WxH but the image is WxH; masks must be at the image's size', sizes given (H, W); a mask of
    the image's size turned a quarter is told where such a turn comes from (EXIF orientation)."""
    (height, width), (image_height, image_width) = mask_size, image_size
    message = (f"{subject} {width}x{height} but the image is {image_width}x{image_height}; masks must be at the "
               "image's size")
    if (height, width) == (image_width, image_height):
        message += (" (they are its size turned a quarter: was one of them turned by its EXIF orientation? segment, "
                    "batch and serve read a photo turned as viewers show it; evaluate reads the stored pixels)")
    return message


def open_checked(
    source: Path | io.BytesIO, name: str | Path, what: str = "image", size: tuple[int, int] | None = None
) -> Image.Image:
    """``Image.open`` refusing, by the header alone, a picture over MAX_PIXELS or (``size``: (H, W)) of another size.

    ``name`` is the file named in messages. Nothing is decoded yet: the
    caller decodes (``load()``), closes it, and handles Pillow's own errors
    for files that are not images.
    """
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; the check below refuses.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except Image.DecompressionBombError:
            raise ImageError(f"{what} {name} has more than {MAX_PIXELS} pixels{_RAISE_HINT}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageError(f"{what} {name} is {width}x{height}, more than {MAX_PIXELS} pixels{_RAISE_HINT}")
    if size is not None and (height, width) != tuple(size):
        image.close()
        raise ImageError(wrong_size(f"{what} {Path(name).name} is", (height, width), tuple(size)))
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode (grey, palette, RGBA, CMYK, 16-bit, float)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grey: scale the full range of the file's
        # values to 8 bits rather than clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        array = np.round((array - lo) * scale).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(source: ImageInput) -> Image.Image:
    """Decode a user's photo to 8-bit RGB as viewers show it: EXIF orientation applied, the first frame.

    Accepts a path, a Pillow image, or a uint8 array (H, W), (H, W, 3) or
    (H, W, 4). How it was read (:class:`PhotoReading`) is :func:`photo_reading`
    of the result; a file of several frames is warned about. Raises
    :class:`ImageError` with a one-line reason otherwise. (Datasets are read
    in their stored pixel order instead, as their annotations are:
    ``data.refer.load_dataset_image``.)
    """
    if isinstance(source, Image.Image):
        if _READING in source.info:  # read here already: turned once, warned once
            return _to_rgb(source)
        reading = _reading_of(source, "the image")
        return _with_reading(_to_rgb(ImageOps.exif_transpose(source)), reading)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ImageError(
                f"image array must be uint8 of shape (H, W) or (H, W, 3|4), got {source.dtype} {source.shape}"
            )
        if source.ndim == 3 and source.shape[2] not in (3, 4):
            raise ImageError(f"image array must have 3 or 4 channels, got shape {source.shape}")
        return _to_rgb(Image.fromarray(source))
    path = Path(source)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"image {path} is a folder; give a photo file (for a folder of photos use `globallocal "
                         "batch`)")
    try:
        data = read_regular(path, MAX_PIXELS * _BYTES_PER_PIXEL + (1 << 20), what="image", hint=_RAISE_HINT)
    except InputError as error:
        raise ImageError(str(error)) from None
    if not data:
        raise ImageError(f"image file is empty (0 bytes): {path}")
    try:
        with open_checked(io.BytesIO(data), path) as image:
            reading = _reading_of(image, str(path))
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        # Pillow's own message names its in-memory buffer, not the file.
        raise ImageError(f"cannot decode image {path}: not a picture format this reads; give a {PHOTO_FORMATS} "
                         "photo") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image {path}: {error}; is it a complete {PHOTO_FORMATS} file?") from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageError(f"image has no pixels: {path}")
    return _with_reading(rgb, reading)


def to_normalized_tensor(image: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(3, H, W) float32 tensor of an RGB image in [0, 1], normalised by mean/std."""
    import torch  # here: checking and writing files (run folders, `report`) needs no torch

    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def short_side_size(height: int, width: int, short: int = 800) -> tuple[int, int]:
    """(H, W) with the short side ``short`` and the long side floor(short * long / short_side).

    A photo so elongated that the long side would exceed :data:`MAX_INPUT_SIDE`
    is resized to that long side instead (its short side then falls below
    ``short``), so memory stays bounded; no photo of the datasets comes near.
    """
    low, high = sorted((height, width))
    if short * high > MAX_INPUT_SIDE * low:
        short, long = max(1, (MAX_INPUT_SIDE * low) // high), MAX_INPUT_SIDE
    else:
        long = (short * high) // low
    return (short, long) if height <= width else (long, short)


def x800(image: Image.Image, short: int = 800, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """SPEC section 1: the normalised tensor shared by FreeSOLO and CLIP.

    The short side becomes ``short`` (PIL bilinear on the 8-bit image, no cap
    on the long side), then the tensor is normalised with ``mean``/``std``.
    """
    height, width = short_side_size(image.height, image.width, short)
    resized = image.resize((width, height), Image.BILINEAR)
    return to_normalized_tensor(resized, mean, std)


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """A bool mask from a PNG (or any single-image file): non-zero pixels are in.

    ``size`` (H, W): refuse, before decoding, a mask of another size.
    """
    path = Path(path)
    try:
        with open_checked(path, path, "mask", size) as mask:
            mask.load()
            if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
                array = np.asarray(mask.convert("RGBA"))
                # A cut-out: the opaque pixels are the object.
                return array[..., 3] > 0 if array[..., 3].min() < 255 else array[..., :3].max(axis=2) > 0
            array = np.asarray(mask if mask.mode in ("1", "L", "I", "I;16", "F") else mask.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode mask {path}: {error}") from None
    return array > 0


def check_writable_folder(path: str | os.PathLike, what: str) -> Path:
    """Create the folder ``path`` if needed and check a file can be written there; ``what`` names the option.

    Run before any model loads, so that a typo or a read-only disk fails in a second, not after minutes.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is an existing file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=path)
        os.close(fd)
        Path(probe).unlink(missing_ok=True)  # a run cleaning orphans in this folder may have removed it
    except OSError as error:
        raise InputError(f"{what} {path} is not writable ({error.strerror}); choose another folder") from None
    return path


def umask_mode(base: int = 0o666) -> int:
    """``base`` minus the process umask: what ``open()`` (0666) or ``mkdir`` (0777) would give.

    mkstemp and mkdtemp create private files and folders (0600, 0700); outputs
    written through them are given this mode so colleagues can read them.
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


# The temporary files of atomic_write (.NAME.RANDOM.tmp), which a writer killed before its rename leaves behind.
_WRITE_ORPHAN = re.compile(r"\..+\.[^.]+\.tmp")


def remove_write_orphans(directory: Path, min_age_s: float = 0.0, *, recursive: bool = True) -> int:
    """Delete what killed :func:`atomic_write` calls left in ``directory`` (and its subfolders when
    ``recursive``; symbolic links not followed) at least ``min_age_s`` old; return how many.

    0 only where nobody else can be writing (a run folder under its lock); a
    folder that running writers share (the feature cache) gives a young file
    the time to be renamed by the write in progress that owns it.
    """
    removed, cutoff = 0, time.time() - min_age_s
    for root, folders, names in os.walk(directory):
        if not recursive:
            folders.clear()
        for name in names:
            path = Path(root) / name
            try:
                if _WRITE_ORPHAN.fullmatch(name) and path.is_file() and not path.is_symlink() \
                        and path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer renamed it, or another run removed it
                pass
    return removed


def atomic_write(path: str | os.PathLike, write, sync: bool = True) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it into place.

    A reader never sees a half-written file, and an interrupted write leaves
    any previous file at ``path`` untouched. The file gets the usual
    permissions (0666 minus the umask), so outputs and caches can be shared.
    ``sync``: fsync before the rename (durable across a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.chmod(tmp, umask_mode())
        pending = _DEFERRED.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def all_or_none() -> Iterator[None]:
    """The files :func:`atomic_write` writes inside the block appear together when it ends, or none if it fails.

    Each is written to its temporary file as usual; the renames into place wait
    for the end of the block, so an output that cannot be written (a full
    disk, a folder turned read-only) leaves no other output of the command.
    """
    pending: list[tuple[str, Path]] = []
    token = _DEFERRED.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _DEFERRED.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)
def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) array encoded as PNG (the one encoder of every PNG written)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png_bytes(mask: np.ndarray | torch.Tensor) -> bytes:
    """A bool mask as an 8-bit grey PNG, 0 outside and 255 inside."""
    if hasattr(mask, "cpu"):  # a torch tensor
        mask = mask.cpu().numpy()
    return png_bytes(mask.astype(np.uint8) * 255)


def save_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write bytes atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(data))


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, atomically (see :func:`atomic_write`)."""
    save_bytes(png_bytes(array), path)


def save_mask_png(mask: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """A bool mask as an 8-bit grey PNG, 0 outside and 255 inside."""
    save_bytes(mask_png_bytes(mask), path)


def save_text(text: str, path: str | os.PathLike) -> None:
    """Write UTF-8 text atomically."""
    save_bytes(text.encode("utf-8"), path)


def image_digest(image: Image.Image) -> str:
    """SHA-256 of the decoded pixels and their shape: what a model's answer depends on, whatever file they came
    from (the feature cache's and the VLM reply cache's key of a photo)."""
    pixels = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
