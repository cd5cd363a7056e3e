"""The README and the docs/ pages hold to the code.

Their ```python blocks run as written (tiny models stand in for the downloaded
ones), their ```sh command lines parse with the real command line, the
dotted ``globallocal`` names and package paths they mention exist, and every
relative link (and #anchor) resolves. A block that cannot run offline is
fenced ```text instead.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

import globallocal
from globallocal import cli
from globallocal.methods.tcl import blend as tcl_blend
from globallocal.proposals import sources
from globallocal.proposals.files import load_proposals
from globallocal.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PAGE_IDS = [str(page.relative_to(REPO)) for page in PAGES]
# The ```python blocks each page holds: a block lost (or fenced by mistake) fails here.
PYTHON_BLOCKS = {"README.md": 1, "docs/api.md": 4, "docs/global-local.md": 1, "docs/hybridgl.md": 1, "docs/tcl.md": 1}
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def blocks(page: Path, lang: str | None = None) -> list[str]:
    """The fenced blocks of a page (of one language), dedented."""
    found = []
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        if lang is None or match["lang"] == lang:
            indent = len(match["indent"])
            found.append("".join(line[indent:] for line in match["body"].splitlines(keepends=True)))
    return found


def prose(page: Path) -> str:
    """A page without its fenced blocks."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def test_the_pages_and_their_python_blocks_are_found():
    assert {"README.md", "docs/README.md", "docs/api.md", "docs/development.md"} <= set(PAGE_IDS)
    counts = {page: len(blocks(REPO / page, "python")) for page in PAGE_IDS}
    assert {page: n for page, n in counts.items() if n} == PYTHON_BLOCKS
    # The fence pattern sees an indented block (one in a list item) and its language.
    assert any("--alpha 0.8,0.85" in block for block in blocks(REPO / "docs/evaluation.md", "sh"))


def check_readme(namespace: dict, example: dict) -> None:
    assert [r.phrase for r in namespace["results"]] == ["the dog", "the red car"]
    assert namespace["results"][0].mask.shape == example["size"]


def check_api(namespace: dict, example: dict) -> None:
    assert namespace["result"].mask.shape == example["size"]
    assert [r.phrase for r in namespace["results"]] == ["the dog", "the red car"]
    assert namespace["segmenter"].clip.name.startswith("tiny-resnet")  # "RN50" was asked for


def check_tcl(namespace: dict, example: dict) -> None:
    assert namespace["tcl"].method.name == "tcl"
    result = namespace["result"]
    assert result.inner.index is not None and result.tcl_weight == 0.3
    assert result.tcl_scores.shape == (len(example["masks"]),) and result.soft_mask.shape == example["size"]


# What a page's blocks must have left behind; pages whose blocks assert for themselves have none.
CHECKS = {"README.md": check_readme, "docs/api.md": check_api, "docs/tcl.md": check_tcl}


@pytest.mark.parametrize("page", sorted(PYTHON_BLOCKS))
def test_python_blocks_run(page, example, tiny_config_paths, tiny_checkpoints, request, tmp_path, monkeypatch):
    """The tiny models stand in for the downloaded CLIP (RN... names: the tiny ResNet) and TCL head, a mask
    folder for FreeSOLO; everything else (presets, methods, options) is the real code."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(example["image"], tmp_path / "photo.jpg")
    shutil.copy(request.getfixturevalue("tcl_checkpoint"), tmp_path / "tcl.pth")
    (tmp_path / "photo_masks").mkdir()
    for i, mask in enumerate(example["masks"]):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "photo_masks" / f"{i:03d}.png")

    class MaskFolder:
        def generate(self, image):
            return load_proposals(tmp_path / "photo_masks", example["size"])

    pretrained = Segmenter.from_pretrained

    def tiny_pretrained(clip_model=None, clip_weights="openai", *args, **kwargs):
        kind = "resnet" if (clip_model or "").startswith("RN") else "vit"
        return pretrained(str(tiny_config_paths[kind]), str(tiny_checkpoints[kind]), *args, **kwargs)

    monkeypatch.setattr(Segmenter, "from_pretrained", staticmethod(tiny_pretrained))
    monkeypatch.setattr(sources, "build_proposal_generator", lambda *args, **kwargs: MaskFolder())
    monkeypatch.setattr(tcl_blend, "tcl_clip_for", lambda inner, *_: inner.clip)  # the tiny ViT as TCL's CLIP
    namespace: dict = {}
    for block in blocks(REPO / page, "python"):
        exec(compile(block, page, "exec"), namespace)  # noqa: S102 - the page's own code
    CHECKS.get(page, lambda *_: None)(namespace, example)
    assert globallocal.Segmenter is Segmenter


def command_lines(page: Path, program: str = "globallocal") -> list[list[str]]:
    """Every `globallocal ...` line of a page's shell blocks, continuations joined, split as the shell would."""
    lines = []
    for block in blocks(page, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                lines.append(words[1:])
    return lines


def test_command_lines_are_found():
    assert len(command_lines(REPO / "README.md")) >= 7
    assert ["report", "runs/*"] in command_lines(REPO / "README.md")
    assert ["demo"] in command_lines(REPO / "README.md", "make")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_make_targets_exist(page):
    """The targets named exist, and so do the variables set (make demo CLIP_WEIGHTS=...)."""
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    variables = set(re.findall(r"^(\w+) *\??=", makefile, flags=re.M))
    for words in command_lines(page, "make"):
        named = {word for word in words if "=" not in word}
        assigned = {word.split("=")[0] for word in words if "=" in word}
        assert named <= targets and assigned <= variables, f"{page.name}: make {' '.join(words)}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_command_lines_parse(page):
    """Each example names a real command with real options and values of the right types (nothing is run)."""
    commands = typer.main.get_command(cli.app).commands
    for words in command_lines(page):
        assert words and words[0] in commands, f"{page.name}: unknown command in globallocal {' '.join(words)}"
        try:
            commands[words[0]].make_context(words[0], words[1:])
        except Exception as error:  # the command line's own usage errors (typer vendors click)
            pytest.fail(f"{page.name}: globallocal {' '.join(words)}: {error}")


def test_the_parse_check_can_fail():
    segment = typer.main.get_command(cli.app).commands["segment"]
    with pytest.raises(Exception, match="--no-such-option"):
        segment.make_context("segment", ["photo.jpg", "the dog", "--no-such-option"])


def resolves(dotted: str) -> bool:
    """Whether ``globallocal.a.b.c`` is a module, or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        try:
            for name in parts[end:]:
                value = getattr(value, name)
        except AttributeError:
            return False
        return True
    return False


def test_resolves_can_fail():
    assert resolves("globallocal.models.weights.weights_identity") and resolves("globallocal.GlobalLocalSettings")
    assert not resolves("globallocal.clip_models") and not resolves("globallocal.models.clip.no_such_name")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_named_modules_and_paths_exist(page):
    text = page.read_text(encoding="utf-8")
    dotted = set(re.findall(r"(?<![\w./])globallocal(?:\.[A-Za-z_]\w*)+", text))
    for module, names in re.findall(r"^\s*from (globallocal[\w.]*) import ([\w, ]+)$", text, flags=re.M):
        dotted.update(f"{module}.{name.strip()}" for name in names.split(","))
    missing = sorted(name for name in dotted if not resolves(name))
    assert not missing, f"{page.name} names what does not exist: {missing}"
    paths = re.findall(r"(?<![\w./])((?:globallocal|tests|bench|examples)/[\w./-]*)", text)
    assert not [path for path in paths if not (REPO / path).exists()], page.name


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """A page's heading anchors; a repeated heading gets -1, -2, ... as on GitHub."""
    found, repeats = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M):
        base = slug(heading)
        found.add(f"{base}-{repeats[base]}" if base in repeats else base)
        repeats[base] = repeats.get(base, 0) + 1
    return found


def test_slugs_follow_github():
    assert slug("Your own masks: `--masks`") == "your-own-masks---masks"
    assert slug("2. Mask proposals") == "2-mask-proposals"
    assert "sweeping-its-weights" in anchors(REPO / "docs/hybridgl.md")
    readme_links = LINK.findall(prose(REPO / "README.md"))
    assert len(readme_links) >= 20 and "docs/serve.png" in readme_links and any("#" in link for link in readme_links)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_links_resolve_inside_the_repository(page):
    links = LINK.findall(prose(page))
    assert "../shared" not in page.read_text(encoding="utf-8")
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.is_relative_to(REPO) and path.exists(), f"{page.name}: broken link {link}"
        if anchor:
            assert path.suffix == ".md" and anchor in anchors(path), f"{page.name}: no heading for {link}"


# An option's values listed in a page as `--option a|b|c`: the complete lists they may be (one of them, whole).
CHOICE_LIST = re.compile(r"`(--[a-z0-9-]+) ((?:[\w.:+-]+\\?\|)+[\w.:+-]+)`")


def option_choices() -> dict[str, list[tuple[str, ...]]]:
    """Where each option's values come from: the registry and the tables the command line checks against."""
    from globallocal.data.phrasecut import PHRASECUT_SPLITS, SUBSETS
    from globallocal.data.reasonseg import REASONSEG_SUBSETS
    from globallocal.methods import available_methods, get_method
    from globallocal.methods.sam3.settings import ANSWERS
    from globallocal.methods.tcl.settings import TEMPLATES, WINDOW_MODES
    from globallocal.models.devices import PRECISION_NAMES
    from globallocal.proposals import PROPOSAL_KINDS
    from globallocal.proposals.sam import SAM_SETTINGS
    from globallocal.proposals.sam3_settings import PROMPTS
    from globallocal.proposals.sam_weights import SAM2_MODELS, SAM_MODELS
    from globallocal.runs.report import FORMATS

    return {
        "--method": [tuple(available_methods())],
        "--proposals": [PROPOSAL_KINDS, (*PROPOSAL_KINDS, "gt")],  # evaluate's oracle besides
        "--preset": [tuple(get_method(name).preset_names()) for name in available_methods()],
        "--precision": [PRECISION_NAMES],
        "--device": [("auto", "cpu", "cuda", "cuda:N")],  # check_device takes these (and mps)
        "--sam-model": [tuple(SAM2_MODELS), tuple(SAM_MODELS)],
        "--sam-settings": [tuple(SAM_SETTINGS)],
        "--format": [FORMATS, tuple(name for name in FORMATS if name != "table")],  # report's text formats
        "--split": [PHRASECUT_SPLITS],
        "--subset": [SUBSETS, REASONSEG_SUBSETS],
        "--sam3-prompt": [PROMPTS],
        "--sam3-answer": [ANSWERS],
        "--tcl-window": [WINDOW_MODES],
        "--tcl-templates": [tuple(TEMPLATES)],
    }


def test_the_choice_check_sees_lists_and_can_fail():
    assert CHOICE_LIST.findall("`--method global-local|hybridgl` and `--sam-model tiny\\|large`") == [
        ("--method", "global-local|hybridgl"), ("--sam-model", "tiny\\|large")]
    assert ("global-local", "hybridgl") not in option_choices()["--method"]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_option_values_listed_are_the_commands_own(page):
    """A page that lists an option's values lists them all, as the registry and the command line have them."""
    from globallocal.models.devices import check_device

    choices = option_choices()
    for option, listed in CHOICE_LIST.findall(prose(page)):
        values = tuple(listed.replace("\\|", "|").split("|"))
        assert option in choices, f"{page.name}: `{option} {listed}`: add where its values come from to this test"
        assert values in choices[option], f"{page.name}: `{option} {listed}` is not {choices[option]}"
        if option == "--device":
            for value in values:
                check_device(value.replace(":N", ":0"))


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_the_methods_a_page_lists_are_the_registrys(page):
    from globallocal.methods import available_methods

    for listed in re.findall(r"available_methods\(\)\s*#\s*(\[[^\]]*\])", page.read_text(encoding="utf-8")):
        assert ast.literal_eval(listed) == available_methods(), f"{page.name}: {listed}"


@pytest.mark.parametrize("method", ["global-local", "hybridgl", "tcl", "sam3"])
def test_a_methods_page_names_every_preset(method):
    from globallocal.methods import available_methods, get_method

    assert method in available_methods()
    page = REPO / "docs" / f"{method}.md"
    named = set(re.findall(r"`([\w.+-]+)`", prose(page)))
    missing = [preset for preset in get_method(method).preset_names() if preset not in named]
    assert not missing, f"{page.name} does not name the preset(s) {missing}"


def test_sweep_examples_name_the_folders_evaluate_writes():
    """The run folders of `globallocal sweep` examples (its --help and the pages) are evaluate's default ones."""
    from globallocal.commands.common import default_run_dir
    from globallocal.methods import available_methods, get_method

    written = set()
    for name in available_methods():
        spec = get_method(name)
        for dataset in ("refcoco", "refcoco+", "refcocog", "phrasecut"):
            preset = spec.preset_for(dataset)
            clip = spec.default_clip_model if spec.uses_clip else None
            for split in ("val", "testA", "testB", "test"):
                folder = default_run_dir(dataset, split, name, preset, clip, spec.proposals_for(preset) or "none")
                written.add(str(folder))
    sweep = typer.main.get_command(cli.app).commands["sweep"]
    texts = [sweep.help or "", *(page.read_text(encoding="utf-8") for page in PAGES)]
    named = {folder for text in texts for folder in re.findall(r"globallocal sweep\s+(runs/[^\s;]+)", text)}
    assert len(named) >= 2 and named <= written, sorted(named - written)
