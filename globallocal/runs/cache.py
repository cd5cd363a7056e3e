"""A disk cache of what the models compute: proposals and visual features per image, text features per string.

Layout under the cache root::

    visual-<key>/identity.json              what <key> was made from
    visual-<key>/<image_id>-<digest>.npz     one image: proposals (RLE masks, boxes, scores,
                                             areas) and the method's image features (named tensors,
                                             e.g. Global-Local's unblended global and local features)
    text-<key>/identity.json
    text-<key>/<ab>/<sha256 of the text>.npz raw text features of one string

The keys name everything that decides the stored values, so a hit can be used
as is:

- model: the architecture (an open_clip name, or the content of a model-config
  file), the weights (a pretrained tag, or a fingerprint of the file's
  content: moving or copying it keeps the cache valid), precision, device type
  and the torch / open_clip versions (kernels change the last bits between
  versions and devices, and cached and fresh runs must agree exactly);
- the method and its visual settings (visual key only: the settings the image
  features depend on, :attr:`Method.visual_settings`; for Global-Local
  clip_normalization, antialias, crop_fill, crop_box, short_side,
  masked_blocks, and chunk_size, the crop batch size, which can change the
  last bits of the local features). Not alpha, beta or feature_norm: they are
  applied when scoring, so one cache serves every value of them;
- per image: the decoded pixels, and either the proposal source's key (a
  deterministic, expensive source such as FreeSOLO, whose proposals are then
  cached too) or, for a source without one, the proposals' content (the
  source is called every time and only the image tower is saved);
- with a phrase-dependent source (SAM 3's concepts), one entry per image and
  query: the source's key (its settings and weights) and the query (noun
  phrase and head noun), holding that query's candidates, the step that found
  them, and the method's features of them.

Files are written to a temporary name and renamed into place, so a reader
never sees a half-written entry. They are not fsynced: an entry damaged by a
crash fails to load (the .npz zip format checks a CRC-32 per array) and is
recomputed, with a warning naming it, which is cheaper than an fsync per
text string; every entry is checked as data when read
(:mod:`~globallocal.runs.cache_stores`). A visual entry stores its own name
and a text entry its string, so a file copied or renamed to another key is a
miss. Temporary files a killed writer left are
removed when the cache is next prepared, once they are an hour old (younger
ones may be a concurrent run's writes in progress).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..data.images import remove_write_orphans, save_text
from ..errors import InputError
from ..models.clip import ClipBundle
from ..models.weights import library_versions, weights_identity
from ..proposals import Proposals
from .cache_stores import ImageEntry, TextStore, VisualStore

if TYPE_CHECKING:
    from ..methods import Method
    from ..segmenter import Segmenter

__all__ = [
    "FeatureCache",
    "ImageEntry",
    "TextStore",
    "VisualStore",
    "clip_identity",
    "image_digest",
    "proposals_digest",
]

# Bumped when an entry's layout or meaning changes; part of every key.
# 2: whole-file weights identity, entries store their own name; 3: named tensors of any method.
_FORMAT = 3

IDENTITY_FILE = "identity.json"

# Temporary files older than this are orphans of a killed writer: the cache is shared by concurrent runs,
# and an entry is written in well under a second.
ORPHAN_AGE_S = 3600.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(value: Any) -> str:
    return _sha256(json.dumps(value, sort_keys=True).encode("utf-8"))


def clip_identity(clip: ClipBundle, clip_model: str) -> dict[str, Any]:
    """What identifies a loaded CLIP's outputs; ``clip_model`` is the name or config file it was built from."""
    if clip_model.endswith(".json"):
        architecture: dict[str, Any] = {"config_sha256": _sha256(Path(clip_model).read_bytes())}
    else:
        architecture = {"name": clip_model}
    if clip.weights == "random":
        raise InputError("random CLIP weights cannot be cached: every load draws new ones")
    if os.path.isfile(clip.weights):
        weights: dict[str, Any] = {"file": weights_identity(clip.weights)}
    else:
        weights = {"tag": clip.weights}
    return {
        "architecture": architecture,
        "weights": weights,
        "quick_gelu": clip.uses_quick_gelu,
        "dtype": str(clip.dtype).removeprefix("torch."),
        "device": clip.device.type,
        **library_versions(),
    }


def image_digest(image: Image.Image) -> str:
    """SHA-256 of the decoded pixels (what the features depend on, whatever file they came from)."""
    pixels = np.ascontiguousarray(np.asarray(image))
    return _sha256(repr(pixels.shape).encode() + pixels.tobytes())


def proposals_digest(proposals: Proposals) -> str:
    """SHA-256 of the masks, boxes and scores."""
    masks = proposals.masks.numpy()
    digest = hashlib.sha256(repr(masks.shape).encode())
    digest.update(np.packbits(masks).tobytes())
    digest.update(proposals.boxes.numpy().tobytes())
    digest.update(proposals.scores.numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """The cache folders of one CLIP model and the visual settings of one method (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], clip: dict[str, Any], family: str, method: Method) -> None:
        self.root = Path(root).expanduser().resolve()
        self.family = family
        self.text_identity = {"format": _FORMAT, "clip": clip}
        self.visual_identity = {
            "format": _FORMAT,
            "clip": clip,
            "family": family,
            "settings": method.visual_identity(),
        }
        self.visual = VisualStore(self.root / f"visual-{_digest(self.visual_identity)[:16]}")
        self.text = TextStore(self.root / f"text-{_digest(self.text_identity)[:16]}")

    @classmethod
    def for_segmenter(cls, root: str | os.PathLike[str], segmenter: Segmenter, clip_model: str) -> FeatureCache:
        """The cache of a :class:`~globallocal.Segmenter`; ``clip_model`` is the name or config file it loaded."""
        return cls(root, clip_identity(segmenter.clip, clip_model), segmenter.clip.family, segmenter.method)

    def prepare(self) -> None:
        """Create the folders and their identity.json, and remove temporary files killed writers left."""
        for store, identity in ((self.visual, self.visual_identity), (self.text, self.text_identity)):
            path = store.directory / IDENTITY_FILE
            if not path.exists():
                save_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", path)
            remove_write_orphans(store.directory, ORPHAN_AGE_S)

    def describe(self) -> dict[str, Any]:
        """Where the cache is, as a run's configuration records it."""
        return {
            "dir": str(self.root),
            "visual": self.visual.directory.name,
            "text": self.text.directory.name,
            "family": self.family,
        }

    @staticmethod
    def entry_name(image_id: int, pixels: str, proposal_key: dict[str, Any]) -> str:
        """The entry of an image (its pixel digest) under a proposal key."""
        return f"{image_id}-{_digest({'pixels': pixels, 'proposals': proposal_key})[:32]}"
