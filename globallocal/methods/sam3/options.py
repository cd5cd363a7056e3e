"""The command line's options of ``--method sam3``: which settings and builder options they are.

``--sam3-prompt`` and ``--sam3-answer`` are the method's own (``prompt``,
``answer``). ``--sam3-weights``, ``--sam3-threshold``, ``--sam3-fallback`` and
``--max-proposals`` are declared once for ``--proposals sam3``; with
``--method sam3`` they configure the method instead: the weights and the
proposal cap go to its builder, the threshold and the fallback chain to its
settings. Nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from .. import MethodSpec
from ..command_options import CommandOptions

if TYPE_CHECKING:
    from ...models.hub import MissingFile

SAM3_METHOD = "sam3"


@dataclass(frozen=True)
class Sam3Options(CommandOptions):
    """The SAM 3 options a command received (None: not given)."""

    weights: Path | None = None
    threshold: float | None = None
    fallback: str | None = None
    prompt: str | None = None
    answer: str | None = None
    max_proposals: int | None = None

    # field -> the command's argument; the first four are the proposal options --method sam3 takes for itself.
    ARGUMENTS = {"weights": "sam3_weights", "threshold": "sam3_threshold", "fallback": "sam3_fallback",
                 "max_proposals": "max_proposals", "prompt": "sam3_prompt", "answer": "sam3_answer"}
    TAKEN_FROM_PROPOSALS = ("sam3_weights", "sam3_threshold", "sam3_fallback", "max_proposals")

    def check(self, spec: MethodSpec, proposals: str | None) -> None:
        """Refuse, naming it, what does not apply: --sam3-prompt/--sam3-answer beside another method, and
        proposals or a bad proposal cap or weights folder with --method sam3."""
        if spec.name != SAM3_METHOD:
            own = [flag for flag in self.given() if flag in ("--sam3-prompt", "--sam3-answer")]
            if own:
                raise InputError(f"{own[0]} applies to --method sam3 (SAM 3 alone); under --method {spec.name} "
                                 "the method itself picks among SAM 3's instances (--proposals sam3)")
            return
        if proposals is not None:
            raise InputError(f"--proposals {proposals} does not apply to --method sam3: SAM 3 finds its own "
                             "instances (--proposals sam3 puts them under --method global-local or hybridgl)")
        from ...proposals.requirements import check_max_proposals

        check_max_proposals(self.max_proposals)
        if self.weights is not None:
            from ...proposals.sam3_weights import check_sam3_folder

            check_sam3_folder(self.weights)

    def proposal_arguments(self, method: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A command's arguments for its proposal options: without those --method sam3 takes itself."""
        if method != SAM3_METHOD:
            return arguments
        return {name: value for name, value in arguments.items() if name not in self.TAKEN_FROM_PROPOSALS}

    def method_overrides(self, method: str) -> dict[str, Any]:
        """The given fields of :class:`~globallocal.methods.sam3.settings.Sam3Settings` when it is the method."""
        if method != SAM3_METHOD:
            return {}
        names = ("prompt", "answer", "threshold", "fallback")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def method_options(self, method: str) -> dict[str, Any] | None:
        """Options for the method's builder: SAM 3's weights folder and proposal cap when it is the method."""
        if method != SAM3_METHOD:
            return None
        options = {"weights": None if self.weights is None else str(self.weights)}
        return options | ({"max_proposals": self.max_proposals} if self.max_proposals is not None else {})


def missing_method_files(options: Mapping[str, Any] | None) -> list[MissingFile]:
    """SAM 3's weights when ``--method sam3`` would have to download them (its builder's ``weights`` option
    names a folder otherwise)."""
    from ...proposals.sam3_weights import missing_sam3_weights

    missing = missing_sam3_weights((options or {}).get("weights"))
    return [missing] if missing is not None else []
