"""The prompts a preset sends: the built-in texts (:mod:`.prompt_texts`) or a folder's files, and their digest.

``--vlm-prompts DIR`` replaces any of a mode's texts by ``DIR/NAME.txt``
(bounded regular files, UTF-8, stripped of surrounding white space as the
authors read theirs); a text without a file keeps the built-in wording. A
``.txt`` file that no preset reads, a folder with no file for the mode, an
empty file or a template field that does not exist is refused in one line
naming the file. The digest of the texts in use is what a run records.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...data.bounded import read_regular
from ...errors import InputError
from .prompt_texts import FIELDS, PRESET_PROMPTS

__all__ = ["BUILT_IN", "MAX_PROMPT_BYTES", "Prompts", "builtin_prompts", "load_prompts", "prompt_names"]

MAX_PROMPT_BYTES = 1 << 20  # the authors' system prompt is about 30 KB
BUILT_IN = "built-in"
_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")


def prompt_names(mode: str) -> tuple[str, ...]:
    """The names of the texts a mode sends (each one's file is ``NAME.txt``)."""
    return tuple(PRESET_PROMPTS[mode])


@dataclass(frozen=True)
class Prompts:
    """The texts of one mode, by name, and where they came from."""

    texts: Mapping[str, str]
    source: str = BUILT_IN
    """"built-in", or the folder the files were read from."""

    def text(self, name: str) -> str:
        return self.texts[name]

    def fill(self, name: str, **values: Any) -> str:
        """The template ``name`` with its ``{field}`` s replaced (other braces, such as JSON, stay)."""
        return _FIELD.sub(lambda match: str(values[match[1]]) if match[1] in values else match[0], self.texts[name])

    @property
    def digest(self) -> str:
        """sha256 of the texts in use, names included (what a run's settings record)."""
        payload = json.dumps(sorted(self.texts.items()), ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, str]:
        return {"prompts": self.source, "prompts_digest": self.digest}


def builtin_prompts(mode: str) -> Prompts:
    """This project's texts for ``mode`` (agent, box, marks)."""
    return Prompts(dict(PRESET_PROMPTS[mode]))


def _read(path: Path, name: str) -> str:
    data = read_regular(path, MAX_PROMPT_BYTES, what="prompt file")
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise InputError(f"prompt file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not text:
        raise InputError(f"prompt file {path} is empty")
    if name in FIELDS:
        unknown = sorted(set(_FIELD.findall(text)) - set(FIELDS[name]))
        if unknown:
            known = ", ".join(f"{{{field}}}" for field in FIELDS[name])
            raise InputError(f"prompt file {path} uses {{{unknown[0]}}}, which is not one of its fields ({known})")
    return text


def load_prompts(folder: str | Path, mode: str) -> Prompts:
    """``mode``'s texts with those the folder holds a file for replaced (see the module's docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--vlm-prompts {folder} is not a folder; give the folder that holds the prompt files")
    known = {name for texts in PRESET_PROMPTS.values() for name in texts}
    try:
        files = sorted(path for path in folder.iterdir() if path.suffix == ".txt")
    except OSError as error:
        raise InputError(f"--vlm-prompts {folder} cannot be read ({error.strerror})") from None
    for path in files:
        if path.stem not in known:
            raise InputError(f"prompt file {path} is not one the tool reads; the names are "
                             f"{', '.join(sorted(known))} (each NAME.txt)")
    wanted = prompt_names(mode)
    given = {path.stem: path for path in files if path.stem in wanted}
    if not given:
        raise InputError(f"--vlm-prompts {folder} holds no prompt file for this preset; it reads "
                         f"{', '.join(f'{name}.txt' for name in wanted)}")
    texts = {name: _read(given[name], name) if name in given else text for name, text in PRESET_PROMPTS[mode].items()}
    return Prompts(texts, str(folder))
