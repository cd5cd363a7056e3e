"""A vision-language model (VLM) picks the referred object among candidate masks (``--method vlm``).

Three presets of one method (/work/shared/SPEC-vlm.md): ``sam3-agent`` (SAM 3
Agent's loop, :mod:`.agent`), ``box`` (one grounding call, :mod:`.grounding`)
and ``marks`` (one call over numbered candidates, :mod:`.marks`). Each is a
generator of requests (:mod:`.steps`), so that one driver sends the requests
of every phrase of a photo together. The folder holds no model: it talks to a
chat backend through the protocol in :mod:`.chat`.
"""
