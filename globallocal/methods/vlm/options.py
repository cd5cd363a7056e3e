"""The command line's options of ``--method vlm``: which settings and builder options they are.

``--vlm-backend``, ``--vlm-model``, ``--vlm-url``, ``--vlm-api-key-env``,
``--vlm-family``, ``--vlm-max-pixels`` and ``--vlm-prompts`` choose the model and
the texts (the method's builder); ``--vlm-shortlist`` and ``--vlm-box-format``
are settings. Everything is checked here before any model loads: a missing
model offline is named at once. Nothing heavy is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...errors import InputError
from .. import MethodSpec
from ..command_options import CommandOptions

VLM_METHOD = "vlm"
MAX_PIXELS_BOUND = 16 * 1024 * 1024
"""The largest photo a VLM may be given (Qwen3-VL's own bound: 16 megapixels, some 16 thousand tokens)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True)
class VlmOptions(CommandOptions):
    """The VLM options a command received (None: not given)."""

    backend: str | None = None
    model: str | None = None
    url: str | None = None
    api_key_env: str | None = None
    family: str | None = None
    max_pixels: int | None = None
    precision: str | None = None
    prompts: Path | None = None
    shortlist: str | None = None
    box_format: str | None = None

    # field -> the command's argument
    ARGUMENTS = {"backend": "vlm_backend", "model": "vlm_model", "url": "vlm_url", "api_key_env": "vlm_api_key_env",
                 "family": "vlm_family", "max_pixels": "vlm_max_pixels", "precision": "vlm_precision",
                 "prompts": "vlm_prompts",
                 "shortlist": "vlm_shortlist", "box_format": "vlm_box_format"}
    SETTINGS = ("shortlist", "box_format")

    @property
    def kind(self) -> str:
        return self.backend or "transformers"

    def check(self, spec: MethodSpec, proposals: str | None, preset: str | None) -> None:
        """Refuse, naming it, what does not apply or cannot work, before any model loads."""
        from ...models.vlm.backend import BACKENDS, FAMILIES

        given = self.given()
        if spec.name != VLM_METHOD:
            if given:
                raise InputError(f"{given[0]} applies to --method vlm, not --method {spec.name}")
            return
        if self.kind not in BACKENDS:
            raise InputError(f"unknown --vlm-backend {self.kind!r}; use one of {', '.join(BACKENDS)}")
        if self.family is not None and self.family not in FAMILIES:
            raise InputError(f"unknown --vlm-family {self.family!r}; use one of {', '.join(FAMILIES)}")
        if self.max_pixels is not None and not 28 * 28 <= self.max_pixels <= MAX_PIXELS_BOUND:
            raise InputError(f"--vlm-max-pixels must be between {28 * 28} and {MAX_PIXELS_BOUND}, "
                             f"got {self.max_pixels}")
        if self.precision is not None:
            from ...models.devices import PRECISION_NAMES

            if self.precision not in PRECISION_NAMES:
                raise InputError(f"unknown --vlm-precision {self.precision!r}; use one of {', '.join(PRECISION_NAMES)}")
        if self.kind == "openai":
            self._check_endpoint()
            if self.precision is not None:
                raise InputError("--vlm-precision applies to the model in this process, not to an endpoint")
        else:
            stray = [self.flag(name) for name in ("url", "api_key_env") if getattr(self, name) is not None]
            if stray:
                raise InputError(f"{stray[0]} applies to --vlm-backend openai (an endpoint), not to the model in "
                                 "this process")
        if self.prompts is not None and not self.prompts.is_dir():
            raise InputError(f"--vlm-prompts {self.prompts} is not a folder; give the folder that holds the prompt "
                             "files")
        settings = spec.settings(preset, **self.method_overrides(VLM_METHOD))
        if settings.mode == "agent" and proposals not in (None, "sam3"):
            raise InputError(f"the {preset or spec.default_preset} preset prompts SAM 3 itself, so it takes no "
                             f"--proposals {proposals}; use --preset box or marks to choose among {proposals}'s "
                             "proposals")
        if settings.shortlist != "source" and settings.mode != "marks":
            raise InputError("--vlm-shortlist ranks the candidates the marks preset draws; add --preset marks")
        if self.kind == "transformers" and self.model is not None:
            from ...models.vlm.loading import check_vlm_folder, is_hub_id

            if not is_hub_id(self.model):
                check_vlm_folder(self.model)  # a hub id missing offline is named with every other missing file

    def _check_endpoint(self) -> None:
        if not self.url:
            raise InputError("--vlm-backend openai needs the endpoint: --vlm-url http://HOST:PORT/v1")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--vlm-url {self.url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
        if parts.username or parts.password:
            raise InputError("--vlm-url must not hold credentials; put the key in an environment variable "
                             "(--vlm-api-key-env NAME)")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            raise InputError(f"--vlm-api-key-env takes the NAME of an environment variable, got {self.api_key_env!r}")

    def method_overrides(self, method: str) -> dict[str, Any]:
        """The given fields of :class:`~globallocal.methods.vlm.settings.VlmSettings` when it is the method."""
        if method != VLM_METHOD:
            return {}
        return {name: getattr(self, name) for name in self.SETTINGS if getattr(self, name) is not None}

    def method_options(self, method: str, cache: Path | None = None) -> dict[str, Any] | None:
        """Options for the method's builder (the backend, its model, the prompt files; ``cache``: the run's
        feature cache, which keeps the replies too) when it is the method."""
        if method != VLM_METHOD:
            return None
        # The VLM's own precision (None: bf16 on CUDA, fp32 on the CPU), never the command's --precision (CLIP's).
        options: dict[str, Any] = {"kind": self.kind, "precision": self.precision}
        for name in ("model", "url", "api_key_env", "family", "max_pixels", "prompts"):
            value = getattr(self, name)
            if value is not None:
                options[name] = str(value) if isinstance(value, Path) else value
        if cache is not None:
            options["cache_dir"] = str(cache)
        return options


def missing_method_files(options: dict[str, Any] | None) -> list[Any]:
    """The in-process VLM when it is a hub id neither cached nor downloadable now (the registry's ``model_files``:
    named with every other missing file, before any model loads); nothing for a folder or an endpoint."""
    options = options or {}
    if options.get("kind", "transformers") != "transformers":
        return []
    from ...models.vlm.backend import DEFAULT_VLM_MODEL
    from ...models.vlm.loading import missing_vlm_model

    missing = missing_vlm_model(str(options.get("model") or DEFAULT_VLM_MODEL))
    return [] if missing is None else [missing]
