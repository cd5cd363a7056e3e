"""globallocal: zero-shot referring image segmentation with global-local CLIP features.

Implements Yu, Seo and Son, "Zero-shot Referring Image Segmentation with
Global-Local Context Features" (CVPR 2023).
"""

from .errors import GlobalLocalError, ImageError, InputError, NoProposalsError, WeightsError
from .presets import PRESETS, Settings, get_preset
from .proposals import Proposals
from .segmenter import Segmenter, SegmentResult

__version__ = "0.1.0"

__all__ = [
    "GlobalLocalError",
    "ImageError",
    "InputError",
    "NoProposalsError",
    "PRESETS",
    "Proposals",
    "SegmentResult",
    "Segmenter",
    "Settings",
    "WeightsError",
    "get_preset",
]
