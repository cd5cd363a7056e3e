"""Loading a transformers model quietly: its own per-load progress bar is noise in every run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["without_loading_bars"]


def _disabled(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return factory(*args, **{**kwargs, "disable": True})


@contextmanager
def without_loading_bars() -> Iterator[None]:
    """transformers' progress bars off in the block (also as a decorator): its "Loading weights" bar over a
    model's tensors, drawn at every load, even in a log. Downloads keep their bars (those are huggingface_hub's).
    """
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.set_tqdm_hook(_disabled)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)
