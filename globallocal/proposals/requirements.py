"""What a proposal source needs, known before any model loads: its options' checks and its missing weights.

The command line refuses a bad proposal option before torch is imported
(:func:`check_proposal_options`), and names every weights file the source
would have to download or cannot get (:func:`missing_proposal_files`) in the
one message of :func:`~globallocal.models.hub.require_files`, beside CLIP's
and the method's, before any model loads. Importing this module imports no
torch; listing the missing files imports what each source's lookup needs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import InputError
from .sam_weights import check_sam_model

if TYPE_CHECKING:
    from ..models.hub import MissingFile

__all__ = ["check_max_proposals", "check_proposal_options", "missing_proposal_files"]


def check_max_proposals(max_proposals: int | None) -> None:
    """Refuse a proposal cap below one (None: no cap)."""
    if max_proposals is not None and max_proposals < 1:
        raise InputError(f"max_proposals must be at least 1, got {max_proposals}")


def check_proposal_options(kind: str, model: str | None, max_proposals: int | None) -> None:
    """What can be refused of a source's options without torch: the cap, and a SAM model name of the other family
    (``--proposals sam2 --sam-model vit_b``)."""
    check_max_proposals(max_proposals)
    if kind in ("sam", "sam2"):
        check_sam_model(kind, model)


def missing_proposal_files(
    kind: str, model: str | None, weights: str | os.PathLike[str] | None, sam3_fallback: str | None = None
) -> list[MissingFile]:
    """The weights files the source ``kind`` would load that are not on this machine (a given file is not
    missing: its loader checks it); for SAM 3 with the fallback step ``sam2``, SAM 2's as well."""
    if kind == "freesolo":
        from .freesolo_checkpoint import missing_freesolo_weights

        files = [missing_freesolo_weights(weights)]
    elif kind == "sam":
        from .sam_weights import missing_sam_weights

        files = [missing_sam_weights(model, weights)]
    elif kind == "sam2":
        from .sam_weights import missing_sam2_weights

        files = [missing_sam2_weights(model, weights)]
    elif kind == "sam3":
        from .sam3_settings import DEFAULT_FALLBACK, parse_fallback
        from .sam3_weights import missing_sam3_weights

        files = [missing_sam3_weights(weights)]
        if "sam2" in parse_fallback(DEFAULT_FALLBACK if sam3_fallback is None else sam3_fallback):
            files += missing_proposal_files("sam2", model, None)
    else:
        files = []
    return [file for file in files if file is not None]
