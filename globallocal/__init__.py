"""globallocal: zero-shot referring image segmentation with global-local CLIP features.

Implements Yu, Seo and Son, "Zero-shot Referring Image Segmentation with
Global-Local Context Features" (CVPR 2023).

The public names are imported on first use (PEP 562), so that importing a
light submodule such as ``globallocal.errors`` (the command line's ``--help``
does) does not pay for torch, open_clip and spaCy.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "GlobalLocalError": "errors",
    "ImageError": "errors",
    "InputError": "errors",
    "NoProposalsError": "errors",
    "WeightsError": "errors",
    "GlobalLocalSettings": "methods",
    "Proposals": "proposals",
    "SegmentResult": "methods.base",
    "Segmenter": "segmenter",
    "available_methods": "methods",
    "build_method": "methods",
    "get_method": "methods",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, {name: f".{module}" for name, module in _EXPORTS.items()})


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
