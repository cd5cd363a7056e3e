"""What a process (or a Ray actor) builds once to do units: the segmenter, the proposal source, and what
they are as a run's configuration records them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..models.weights import weights_identity

__all__ = ["Worker", "WorkerRecipe", "as_stored", "run_description"]


def as_stored(value: Any) -> Any:
    """``value`` as config.json stores it (keys sorted, tuples as lists, other objects as text), to compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_description(settings: dict[str, Any], weights: dict[str, str | Path]) -> dict[str, Any]:
    """What a run was, as every output that can be reproduced records it (evaluate's and batch's config.json,
    `segment --json`, `proposals.json`): its ``settings`` and its weights files (``{role: path}``) by content,
    ``{role: {"size", "sha256"}}``, wherever they lie."""
    weights_by_content = {role: weights_identity(path) for role, path in sorted(weights.items())}
    return as_stored({"settings": settings, "weights": weights_by_content})


@dataclass
class Worker:
    """A built segmenter and proposal ``source`` (a generator, ``"gt"`` or None); ``settings`` and ``weights``
    (``{role: path}``) describe them; ``proposal_key``: the generator's feature-cache key."""

    segmenter: Any
    source: Any
    settings: dict[str, Any]
    weights: dict[str, str | Path] = field(default_factory=dict)
    proposal_key: dict[str, Any] | None = None

    def image_source(self) -> Any:
        """The generator's ``image -> Proposals`` (None without a generator: user masks, ground truth)."""
        return getattr(self.source, "generate", None)

    def identity(self) -> dict[str, Any]:
        """The settings and the weights by content, as a run's configuration holds them."""
        return run_description(self.settings, self.weights)


class WorkerRecipe(Protocol):
    """How to build a :class:`Worker` (picklable: Ray actors build their own from it)."""

    def build(self, device: str | None = None) -> Worker:
        """The worker on ``device`` (None: the recipe's own)."""
        ...
