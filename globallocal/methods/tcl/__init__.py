"""TCL (Cha, Mun and Roh, CVPR 2023): text-grounded soft masks from a frozen CLIP ViT (SPEC-tcl).

:class:`TCLModel` runs the released model's inference, quirks included:
the image side once per image (:meth:`TCLModel.image_features`), then any
number of texts in one batch (:meth:`TCLModel.soft_masks`).
:func:`load_tcl_head` loads the released ``tcl.pth`` strictly and
:func:`resolve_tcl_weights` finds or downloads it.

The names below are imported on first use (PEP 562), so the torch-free
``settings`` and ``options`` modules of this folder can be imported without
torch: the command line checks TCL's options before any heavy import.
"""

from __future__ import annotations

from ...lazy import lazy_exports

_EXPORTS = {
    "PREPROCESSINGS": "settings",
    "WINDOW_MODES": "settings",
    "tcl_input": "inputs",
    "Layout": "model",
    "TCLModel": "model",
    "layout": "model",
    "TCLHead": "network",
    "pamr_affinity": "pamr",
    "pamr_refine": "pamr",
    "TCL_FILENAME": "weights",
    "TCL_URL": "weights",
    "WEIGHTS_ENV": "weights",
    "default_weights_dir": "weights",
    "load_tcl_head": "weights",
    "resolve_tcl_weights": "weights",
    "patch_padding": "windows",
    "slide_windows": "windows",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, {name: f".{module}" for name, module in _EXPORTS.items()})
