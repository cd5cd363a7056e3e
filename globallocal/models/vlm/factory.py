"""VLM backends by name: the one place that knows every backend (the backends import only the interface)."""

from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from .backend import (
    BACKENDS,
    DEFAULT_API_KEY_ENV,
    DEFAULT_MAX_PIXELS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_VLM_MODEL,
    FAMILIES,
    ChatBackend,
)

__all__ = ["build_vlm_backend"]


def build_vlm_backend(
    kind: str = "transformers",
    *,
    model: str | Path | None = None,
    url: str | None = None,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    device: str = "auto",
    precision: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    family: str | None = None,
    cache_dir: str | Path | None = None,
    deferred: bool = False,
) -> ChatBackend:
    """A backend by name.

    ``transformers``: ``model`` is a hub id (default :data:`DEFAULT_VLM_MODEL`)
    or a local folder; ``device`` and ``precision`` (default bf16 on CUDA,
    fp32 on the CPU). ``openai``: ``url`` of the endpoint (``.../v1``),
    ``model`` the name it serves, the key read from the environment variable
    ``api_key_env``; ``timeout`` seconds per request, ``retries`` of
    transient faults. ``max_pixels`` caps the photo either way; ``family``
    overrides the family the model's name or config says. ``cache_dir``
    keeps replies on disk (:class:`~.reply_cache.CachedBackend`). ``deferred``: the in-process model is
    described now and loaded at its first use (a Ray driver's, which only records what its actors run).
    """
    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown VLM family {family!r}; use one of {', '.join(FAMILIES)}")
    if not isinstance(max_pixels, int) or max_pixels < 28 * 28:
        raise InputError(f"the VLM's max pixels must be an integer of at least {28 * 28}, got {max_pixels!r}")
    if kind == "transformers":
        from .transformers_backend import TransformersBackend

        backend: ChatBackend = TransformersBackend.load(
            model or DEFAULT_VLM_MODEL, device=device, precision=precision, max_pixels=max_pixels, family=family,
            deferred=deferred,
        )
    elif kind == "openai":
        from .openai_backend import OpenAIBackend

        if not url:
            raise InputError("the openai VLM backend needs the endpoint's URL (vlm_url=http://HOST:PORT/v1)")
        backend = OpenAIBackend(url, str(model or DEFAULT_VLM_MODEL), api_key_env=api_key_env,
                                max_pixels=max_pixels, timeout=timeout, retries=retries, family=family)
    else:
        raise InputError(f"unknown VLM backend {kind!r}; use one of {', '.join(BACKENDS)}")
    if cache_dir is not None:
        from .reply_cache import CachedBackend, ReplyStore

        backend = CachedBackend(backend, ReplyStore(cache_dir))
    return backend
