"""TCL's settings, presets and registry entry: what the command line checks before torch loads."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from .. import ANSWERS_ANY, MethodSpec
from ..settings import MethodSettings

TCL_CLIP_MODEL = "ViT-B-16-quickgelu"
"""The CLIP TCL was trained on (OpenAI's ViT-B/16, whose weights need QuickGELU)."""


def shares_openai_clip(name: str, weights: str, quick_gelu: bool | None = None) -> bool:
    """Whether a method's CLIP ``name`` with ``weights`` is OpenAI's ViT-B/16, which TCL then shares in a blend:
    ``openai``, or a local file under a QuickGELU architecture, as OpenAI's weights need (``quick_gelu``: the
    loaded model's; None: read from the name)."""
    quick_gelu = name.endswith("-quickgelu") if quick_gelu is None else quick_gelu
    return name.removesuffix("-quickgelu") == "ViT-B-16" and (weights == "openai" or (os.path.isfile(weights)
                                                                                        and quick_gelu))


__all__ = ["PREPROCESSINGS", "PRESETS", "SPEC", "TEMPLATES", "WINDOW_MODES", "TCLSettings"]

WINDOW_MODES = ("slide", "whole", "demo")
PREPROCESSINGS = ("eval", "eval-float", "demo")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "identity": ("{}",),
    # TCL's evaluation set ("custom"), in the authors' order
    "custom": (
        "itap of a {}.",
        "a bad photo of a {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
        "a photo of many {}.",
        "a photo of {}s.",
    ),
}
THRESHOLD_WITH_PAMR = 0.4
THRESHOLD_WITHOUT_PAMR = 0.5  # "PAMR tends to reduce the foreground area" (TCL's README)


@dataclass(frozen=True)
class TCLSettings(MethodSettings):
    """Everything that decides a TCL soft mask and its answer."""

    window: str = "slide"
    """slide (448 windows, stride 224: the published protocol), whole (one window) or demo (the notebook)."""
    pamr: bool = True
    """Refine the masks with PAMR (section 6)."""
    templates: str = "identity"
    """identity (the phrase as typed: globallocal's choice for expressions) or custom (TCL's 9 templates)."""
    kp_weight: float = 0.3
    """Weight of the KP branch (CLIP's own token similarities); 0 switches it off."""
    threshold: float | None = None
    """The answer is S > threshold; None: 0.4 with PAMR, 0.5 without (TCL's background thresholds)."""
    preprocessing: str | None = None
    """eval (OpenCV, short side 448), eval-float (a float resize: a named deviation) or demo (PIL bicubic,
    short side 224); None: demo for the demo window, eval otherwise."""

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.window in WINDOW_MODES, f"TCL window must be one of {', '.join(WINDOW_MODES)}, got {self.window!r}"),
            (self.templates in TEMPLATES,
             f"TCL templates must be one of {', '.join(TEMPLATES)}, got {self.templates!r}"),
            (0.0 <= self.kp_weight <= 1.0, f"TCL KP weight must be in [0, 1], got {self.kp_weight}"),
            (self.threshold is None or 0.0 <= self.threshold <= 1.0,
             f"TCL threshold must be in [0, 1], got {self.threshold}"),
            (self.preprocessing is None or self.preprocessing in PREPROCESSINGS,
             f"TCL preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {self.preprocessing!r}"),
        ]

    @property
    def mask_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return THRESHOLD_WITH_PAMR if self.pamr else THRESHOLD_WITHOUT_PAMR

    @property
    def input_preprocessing(self) -> str:
        if self.preprocessing is not None:
            return self.preprocessing
        return "demo" if self.window == "demo" else "eval"


_DEFAULT = TCLSettings()
PRESETS: dict[str, TCLSettings] = {
    "default": _DEFAULT,
    # TCL's own evaluation: the custom template set (the paper's Table 2 protocol otherwise)
    "paper": replace(_DEFAULT, templates="custom"),
    "whole": replace(_DEFAULT, window="whole"),
    "demo": replace(_DEFAULT, window="demo"),
}


SPEC = MethodSpec(
    name="tcl",
    summary="TCL (Cha et al., CVPR 2023): the phrase's text-grounded soft mask, thresholded; no proposals",
    implementation="globallocal.methods.tcl.method:TCL",
    presets=PRESETS,
    default_preset="default",
    default_clip_model="ViT-B-16-quickgelu",
    default_proposals=None,
    builder="globallocal.methods.tcl.method:build_tcl",
    model_files="globallocal.methods.tcl.weights:missing_method_files",
    image_tower="vit",
    built_on="ViT-B-16",
    display_name="TCL",
    answers=ANSWERS_ANY,  # a thresholded region: empty where nothing passes, over any number of objects
)
