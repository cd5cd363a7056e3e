"""Vision-language models (VLMs) behind one chat interface: in process (transformers) or an OpenAI-compatible
endpoint, with a disk cache of replies. Names are imported on first use, so the light ones (the checks the
command line runs before torch) stay light."""

from ...lazy import lazy_exports

_EXPORTS = {
    ".backend": ["BACKENDS", "DEFAULT_API_KEY_ENV", "DEFAULT_MAX_PIXELS", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT",
                 "DEFAULT_VLM_MODEL", "FAMILIES", "IN_MEMORY", "ChatBackend", "ChatReply", "LabelLogprobs",
                 "family_of_name"],
    ".factory": ["build_vlm_backend"],
    ".messages": ["Message", "check_messages", "conversation_digest", "image_placeholder", "message_images",
                  "transcript"],
    ".loading": ["check_vlm_folder", "check_vlm_model", "missing_vlm_model"],
    ".transformers_backend": ["TransformersBackend"],
    ".openai_backend": ["OpenAIBackend"],
    ".reply_cache": ["CachedBackend", "ReplyStore"],
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_exports(__name__, {name: module for module, names in _EXPORTS.items() for name in names})
