"""The prompts: built-in texts per preset, ``--vlm-prompts DIR`` files, their digest; and the method's settings."""

from __future__ import annotations

import os
import re

import pytest

from globallocal.errors import InputError
from globallocal.methods.vlm import prompt_texts
from globallocal.methods.vlm.prompts import MAX_PROMPT_BYTES, builtin_prompts, load_prompts, prompt_names
from globallocal.methods.vlm.settings import PRESETS, SPEC, VlmSettings, box_format_for


def test_every_mode_has_its_texts_and_every_template_its_fields():
    assert prompt_names("agent")[:2] == ("system_prompt", "system_prompt_iterative_checking")
    assert prompt_names("box") == ("box_request",) and prompt_names("marks") == ("marks_request",)
    for texts in prompt_texts.PRESET_PROMPTS.values():
        for name, text in texts.items():
            used = set(re.findall(r"\{([A-Za-z_]\w*)\}", text))
            assert used == set(prompt_texts.FIELDS.get(name, ())), name


def test_fill_replaces_fields_and_leaves_other_braces():
    prompts = builtin_prompts("box")
    text = prompts.fill("box_request", query="the {left} man")
    assert "'the {left} man'" in text and '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]' in text
    agent = builtin_prompts("agent")
    assert '{"text_prompt": "a short noun phrase' in agent.text("system_prompt")  # a system prompt is sent as is


def test_files_replace_the_texts_they_name(tmp_path):
    (tmp_path / "system_prompt.txt").write_text("\n  Our system prompt {with braces}.\n\n", encoding="utf-8")
    (tmp_path / "check_query.txt").write_bytes("\ufeffQuery: «{query}»".encode())
    prompts = load_prompts(tmp_path, "agent")
    assert prompts.text("system_prompt") == "Our system prompt {with braces}."  # stripped, as the authors read
    assert prompts.fill("check_query", query="q") == "Query: «q»"  # a BOM is not text
    assert prompts.text("no_masks") == builtin_prompts("agent").text("no_masks")
    assert prompts.describe() == {"prompts": str(tmp_path), "prompts_digest": prompts.digest}


def test_the_digest_follows_the_texts():
    built_in = builtin_prompts("agent")
    assert built_in.digest == builtin_prompts("agent").digest and len(built_in.digest) == 64
    assert built_in.describe()["prompts"] == "built-in"
    assert builtin_prompts("box").digest != built_in.digest
    changed = type(built_in)({**built_in.texts, "no_masks": built_in.texts["no_masks"] + "!"})
    assert changed.digest != built_in.digest


def test_the_authors_folder_layout_is_read(tmp_path):
    """A copy of the authors' system_prompts folder: their two files, nothing else."""
    (tmp_path / "system_prompt.txt").write_text("theirs")
    (tmp_path / "system_prompt_iterative_checking.txt").write_text("theirs too")
    prompts = load_prompts(tmp_path, "agent")
    assert (prompts.text("system_prompt"), prompts.text("system_prompt_iterative_checking")) == ("theirs", "theirs too")


@pytest.mark.parametrize("name, content, message", [
    ("system_prompt.txt", b"", "is empty"),
    ("system_prompt.txt", b" \n\t", "is empty"),
    ("system_prompt.txt", b"\xff\xfe bad", "is not UTF-8 text"),
    ("no_masks.txt", b"No masks for {prompt}; {qeury}", "uses {qeury}, which is not one of its fields ({prompt}, "
                                                        "{query})"),
    ("system_promt.txt", b"typo", "is not one the tool reads"),
    ("system_prompt.txt", b"x" * (MAX_PROMPT_BYTES + 1), "more than the 1 MiB allowed"),
])
def test_bad_files_are_refused_naming_them(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_prompts(tmp_path, "agent")
    assert message in str(caught.value) and name in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_fifo_is_refused_without_blocking(tmp_path, no_hang):
    os.mkfifo(tmp_path / "system_prompt.txt")
    with pytest.raises(InputError, match="system_prompt.txt is a FIFO"):
        load_prompts(tmp_path, "agent")


def test_a_folder_with_nothing_for_the_preset_is_refused(tmp_path):
    with pytest.raises(InputError, match="holds no prompt file for this preset; it reads box_request.txt"):
        load_prompts(tmp_path, "box")
    (tmp_path / "system_prompt.txt").write_text("for the agent")
    with pytest.raises(InputError, match="holds no prompt file"):
        load_prompts(tmp_path, "marks")
    with pytest.raises(InputError, match="is not a folder"):
        load_prompts(tmp_path / "system_prompt.txt", "agent")
    with pytest.raises(InputError, match="is not a folder"):
        load_prompts(tmp_path / "absent", "agent")


# ---- settings -----------------------------------------------------------------------------------------------------

def test_the_presets():
    agent = PRESETS["sam3-agent"]
    assert (agent.mode, agent.max_tokens, agent.overlap_threshold) == ("agent", 4096, 0.3)
    assert (agent.short_rle_chars, agent.max_generations, agent.format_retries) == (4, 100, 0)
    assert PRESETS["sam3-agent-retry"] == VlmSettings(format_retries=2)
    assert PRESETS["box"].mode == "box" and PRESETS["marks"].mode == "marks"
    assert SPEC.name == "vlm" and SPEC.default_preset == "sam3-agent" and SPEC.default_proposals == "sam3"
    assert SPEC.settings("marks", marks_k=5).marks_k == 5
    assert SPEC.implementation == "globallocal.methods.vlm.method:VlmMethod"


@pytest.mark.parametrize("overrides, message", [
    ({"mode": "chat"}, "VLM mode must be one of agent, box, marks, got 'chat'"),
    ({"box_format": "pixels"}, "VLM box format must be one of auto, seen-pixels, grid-1000, photo-pixels"),
    ({"fallback": "random"}, "VLM fallback must be one of best, none"),
    ({"shortlist": "tcl"}, "VLM shortlist must be one of source, global-local, hybridgl"),
    ({"max_tokens": 0}, "VLM max tokens must be in [1, 32768], got 0"),
    ({"max_generations": 0}, "VLM max generations must be in [1, 1000]"),
    ({"format_retries": 11}, "VLM format retries must be in [0, 10]"),
    ({"box_threshold": 1.5}, "VLM box threshold must be in [0.0, 1.0]"),
    ({"marks_k": 0}, "VLM marks k must be in [1, 99]"),
    ({"overlap_threshold": -0.1}, "VLM overlap threshold must be in [0.0, 1.0]"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(InputError) as caught:
        SPEC.settings(None, **overrides)
    assert message in str(caught.value)


def test_the_box_convention_by_family():
    auto = PRESETS["box"]
    assert box_format_for(auto, "qwen2.5-vl") == "seen-pixels"
    assert box_format_for(auto, "qwen3-vl") == "grid-1000"
    assert box_format_for(auto, "other") == box_format_for(auto, "unheard-of") == "grid-1000"
    assert box_format_for(auto.with_overrides(box_format="photo-pixels"), "qwen2.5-vl") == "photo-pixels"
