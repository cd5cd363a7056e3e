"""The command line's TCL options: which method they apply to, and what they build.

``--tcl-window``, ``--tcl-pamr``, ``--tcl-templates``, ``--tcl-kp-weight`` and
``--tcl-weights`` configure TCL wherever it runs: as the method
(``--method tcl``) or blended into a proposal method (``--tcl-weight``).
``--tcl-threshold`` cuts TCL's own answer, so it applies to ``--method tcl``
only; ``--tcl-weight`` to proposal methods only. Anything else is refused
before a model loads, naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from .. import MethodSpec

if TYPE_CHECKING:
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
    weights: Path | None = None
    weight: float | None = None
    """lambda of the blend with a proposal method (SPEC-tcl 9 b); None: no blend."""

    FLAGS = {
        "window": "--tcl-window", "pamr": "--tcl-pamr/--no-tcl-pamr", "templates": "--tcl-templates",
        "kp_weight": "--tcl-kp-weight", "threshold": "--tcl-threshold", "weights": "--tcl-weights",
        "weight": "--tcl-weight",
    }

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
            if self.weight is not None:
                raise InputError("--tcl-weight blends TCL into a proposal method; --method tcl answers with its mask")
        elif self.weight is None:
            if self.given():
                raise InputError(
                    f"{self.given()[0]} applies to --method tcl or with --tcl-weight, not to --method {spec.name}"
                )
            return
        else:
            if not spec.method_class.uses_proposals:
                raise InputError(f"--tcl-weight blends a proposal method's scores; {spec.name} has no proposals")
            if not 0.0 <= self.weight <= 1.0:
                raise InputError(f"--tcl-weight must be in [0, 1], got {self.weight}")
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
        if method == TCL_METHOD and self.weights is not None:
            return {"weights": str(self.weights)}
        return None

    def uses_tcl(self, method: str) -> bool:
        """Whether TCL runs (as the method, or blended in): the answers then carry its soft mask."""
        return method == TCL_METHOD or self.weight is not None

    def with_weights_found(self, method: str) -> TCLOptions:
        """A copy naming TCL's checkpoint, found or downloaded now, so a missing one fails before any model loads."""
        if not self.uses_tcl(method):
            return self
        from . import resolve_tcl_weights

        return replace(self, weights=resolve_tcl_weights(self.weights))

    def run_tag(self, method: str) -> str:
        """The method's name in a run folder: ``+tcl`` with its weight for a blend."""
        return method if self.weight is None else f"{method}+tcl{self.weight:g}"

    def wrap(self, method: Method) -> Method:
        """``method`` blended with TCL when --tcl-weight is given, else ``method`` itself."""
        if self.weight is None:
            return method
        from .blend import blend_with_tcl

        weights = None if self.weights is None else str(self.weights)
        return blend_with_tcl(method, self.weight, self.tcl_settings(), weights)
