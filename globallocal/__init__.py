"""globallocal: zero-shot referring image segmentation with global-local CLIP features.

Implements Yu, Seo and Son, "Zero-shot Referring Image Segmentation with
Global-Local Context Features" (CVPR 2023).
"""

from .errors import GlobalLocalError, ImageError, InputError, NoProposalsError, WeightsError
from .methods import available_methods, build_method, get_method
from .methods.base import SegmentResult
from .methods.global_local import GlobalLocalSettings
from .proposals import Proposals
from .segmenter import Segmenter

__version__ = "0.1.0"

__all__ = [
    "GlobalLocalError",
    "ImageError",
    "InputError",
    "GlobalLocalSettings",
    "NoProposalsError",
    "Proposals",
    "SegmentResult",
    "Segmenter",
    "WeightsError",
    "available_methods",
    "build_method",
    "get_method",
]
