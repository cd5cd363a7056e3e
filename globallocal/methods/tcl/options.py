"""The command line's TCL options: which method they apply to, and what they build.

``--tcl-window``, ``--tcl-pamr``, ``--tcl-templates``, ``--tcl-kp-weight`` and
``--tcl-checkpoint`` configure TCL wherever it runs: as the method
(``--method tcl``) or blended into a proposal method (``--tcl-blend``; ``--tcl-clip-weights``
names the CLIP it then runs on).
``--tcl-threshold`` cuts TCL's own answer, so it applies to ``--method tcl``
only; ``--tcl-blend`` to proposal methods only. Anything else is refused
before a model loads, naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from .. import MethodSpec
from .settings import TCL_CLIP_MODEL, shares_openai_clip

if TYPE_CHECKING:
    from ...models.hub import MissingFile
    from ..base import Method

TCL_METHOD = "tcl"


@dataclass(frozen=True)
class TCLOptions:
    """The TCL options a command received (None: not given)."""

    window: str | None = None
    pamr: bool | None = None
    templates: str | None = None
    kp_weight: float | None = None
    threshold: float | None = None
    checkpoint: Path | None = None
    """TCL's own weights (tcl.pth)."""
    blend: float | None = None
    """lambda of the blend with a proposal method (SPEC-tcl 9 b); None: no blend."""
    clip_weights: Path | None = None
    """A local file of the CLIP TCL runs on in a blend (OpenAI's ViT-B/16)."""

    FLAGS = {
        "window": "--tcl-window", "pamr": "--tcl-pamr/--no-tcl-pamr", "templates": "--tcl-templates",
        "kp_weight": "--tcl-kp-weight", "threshold": "--tcl-threshold", "checkpoint": "--tcl-checkpoint",
        "blend": "--tcl-blend", "clip_weights": "--tcl-clip-weights",
    }

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> TCLOptions:
        """The TCL options among a command's arguments (its ``locals()``), old spellings folded in."""
        def either(new: str, old: str) -> Any:
            return arguments[new] if arguments[new] is not None else arguments[old]

        return cls(
            arguments["tcl_window"], arguments["tcl_pamr"], arguments["tcl_templates"], arguments["tcl_kp_weight"],
            arguments["tcl_threshold"], either("tcl_checkpoint", "tcl_weights"), either("tcl_blend", "tcl_weight"),
            arguments["tcl_clip_weights"],
        )

    def given(self) -> list[str]:
        """The flags of the options given, in declaration order."""
        return [self.FLAGS[f.name] for f in fields(self) if getattr(self, f.name) is not None]

    def settings_overrides(self) -> dict[str, Any]:
        """The given fields of :class:`~globallocal.methods.tcl.method.TCLSettings`."""
        names = ("window", "pamr", "templates", "kp_weight", "threshold")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def check(self, spec: MethodSpec) -> None:
        """Refuse, naming it, an option that does not apply to the method ``spec``; validate the values."""
        if spec.name == TCL_METHOD:
            if self.blend is not None:
                raise InputError("--tcl-blend blends TCL into a proposal method; --method tcl answers with its mask")
            if self.clip_weights is not None:
                raise InputError("--tcl-clip-weights is TCL's CLIP in a --tcl-blend; --method tcl runs on "
                                 "--clip-model / --clip-weights")
        elif self.blend is None:
            if self.given():
                raise InputError(
                    f"{self.given()[0]} applies to --method tcl or with --tcl-blend, not to --method {spec.name}"
                )
            return
        else:
            if not spec.uses_proposals:
                raise InputError(f"--tcl-blend blends a proposal method's scores; {spec.name} has no proposals")
            if not 0.0 <= self.blend <= 1.0:
                raise InputError(f"--tcl-blend must be in [0, 1], got {self.blend}")
            if self.threshold is not None:
                raise InputError("--tcl-threshold cuts TCL's own answer (--method tcl); a blend ranks proposals")
        self.tcl_settings()  # bad values fail before any model loads

    def tcl_settings(self):
        from .settings import TCLSettings

        return TCLSettings().with_overrides(**self.settings_overrides())

    def method_overrides(self, method: str) -> dict[str, Any]:
        """Setting overrides for the method itself (TCL's own when it is the method)."""
        return self.settings_overrides() if method == TCL_METHOD else {}

    def method_options(self, method: str) -> dict[str, Any] | None:
        """Options for the method's builder: TCL's checkpoint when it is the method."""
        if method == TCL_METHOD and self.checkpoint is not None:
            return {"weights": str(self.checkpoint)}
        return None

    def uses_tcl(self, method: str) -> bool:
        """Whether TCL runs (as the method, or blended in): the answers then carry its soft mask."""
        return method == TCL_METHOD or self.blend is not None

    def missing_files(self, method: str, clip_model: str | None, clip_weights: str) -> list[MissingFile]:
        """In a blend, TCL's weights files that are not on this machine: its checkpoint, and OpenAI's CLIP
        ViT-B/16 when it does not share the method's (``--method tcl``: the registry's ``model_files``)."""
        if self.blend is None:
            return []
        from ...models.clip import missing_clip_weights
        from ...models.hub import MissingFile
        from .weights import missing_tcl_weights

        missing = [missing_tcl_weights(self.checkpoint)]
        name = Path(clip_model or "").stem if (clip_model or "").endswith(".json") else clip_model or ""
        if self.clip_weights is None and not shares_openai_clip(name, clip_weights):
            clip = missing_clip_weights(TCL_CLIP_MODEL, "openai")
            missing.append(clip and MissingFile(
                f"{clip.what}, which TCL runs on",
                "run once with network access to cache it, or pass its file with --tcl-clip-weights PATH"))
        return [file for file in missing if file is not None]

    def run_tag(self, method: str) -> str:
        """The method's name in a run folder: ``+tcl`` with its weight for a blend."""
        return method if self.blend is None else f"{method}+tcl{self.blend:g}"

    def wrap(self, method: Method) -> Method:
        """``method`` blended with TCL when --tcl-blend is given, else ``method`` itself."""
        if self.blend is None:
            return method
        from .blend import blend_with_tcl

        weights = None if self.checkpoint is None else str(self.checkpoint)
        clip_weights = None if self.clip_weights is None else str(self.clip_weights)
        return blend_with_tcl(method, self.blend, self.tcl_settings(), weights, clip_weights=clip_weights)
