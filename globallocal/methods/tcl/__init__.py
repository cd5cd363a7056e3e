"""TCL (Cha, Mun and Roh, CVPR 2023): text-grounded soft masks from a frozen CLIP ViT (SPEC-tcl).

:class:`TCLModel` runs the released model's inference, quirks included:
the image side once per image (:meth:`TCLModel.image_features`), then any
number of texts in one batch (:meth:`TCLModel.soft_masks`).
:func:`load_tcl_head` loads the released ``tcl.pth`` strictly and
:func:`resolve_tcl_weights` finds or downloads it.
"""

from .inputs import PREPROCESSINGS, tcl_input
from .model import Layout, TCLModel, layout
from .network import TCLHead
from .pamr import pamr_affinity, pamr_refine
from .weights import TCL_FILENAME, TCL_URL, WEIGHTS_ENV, default_weights_dir, load_tcl_head, resolve_tcl_weights
from .windows import WINDOW_MODES, patch_padding, slide_windows

__all__ = [
    "PREPROCESSINGS",
    "TCL_FILENAME",
    "TCL_URL",
    "WEIGHTS_ENV",
    "WINDOW_MODES",
    "Layout",
    "TCLHead",
    "TCLModel",
    "default_weights_dir",
    "layout",
    "load_tcl_head",
    "pamr_affinity",
    "pamr_refine",
    "patch_padding",
    "resolve_tcl_weights",
    "slide_windows",
    "tcl_input",
]
