"""Mask proposals: the candidate objects a phrase is matched against.

:class:`~.masks.Proposals` and its helpers live in :mod:`.masks` and are
imported on first use (PEP 562), so the source names below can be checked
(``--proposals``) before torch is imported.
"""

from __future__ import annotations

from ..lazy import lazy_exports

PROPOSAL_KINDS = ("freesolo", "sam2", "sam", "sam3")
"""The generators :func:`~.sources.build_proposal_generator` builds by name."""

_EXPORTS = (
    "ProposalGenerator", "Proposals", "check_image_size", "postprocess", "projection_boxes", "tight_box", "tight_boxes"
)
__all__ = ["PROPOSAL_KINDS", *_EXPORTS]
__getattr__ = lazy_exports(__name__, dict.fromkeys(_EXPORTS, ".masks"))
