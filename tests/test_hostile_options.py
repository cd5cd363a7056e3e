"""Options, outputs and sizes a hostile or careless run gives: bounded, checked before work, all or nothing."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from globallocal.data import images
from globallocal.data.images import load_image, save_text, short_side_size, x800
from globallocal.errors import ImageError


@pytest.fixture
def tiny_args(tiny_config_paths, tiny_checkpoints):
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]


@pytest.fixture
def no_models(monkeypatch):
    from globallocal.segmenter import Segmenter

    monkeypatch.setattr(Segmenter, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))


def _error_line(result) -> str:
    assert result.code == 2 and "Traceback" not in result.err, result.err
    return result.err.strip().splitlines()[-1]


# ---- options ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "part"),
    [
        (["--device", "bogus"], "unknown --device 'bogus'; use auto (CUDA when available), cpu, cuda or cuda:N"),
        (["--short-side", "60000"], "short side must be from 32 to 2048 (memory grows with its square), got 60000"),
    ],
)
def test_out_of_bounds_options_are_one_line_before_any_model(cli, example, tiny_args, tmp_path, no_models, extra,
                                                               part):
    line = _error_line(cli("segment", example["image"], "the chair", "--masks", example["mask_dir"],
                           "-o", tmp_path / "m.png", *tiny_args, *extra))
    assert line.startswith("error: ") and part in line


def test_every_integer_option_is_bounded_to_64_bits_where_it_is_parsed(cli):
    import typer.main
    from typer._click.exceptions import BadParameter

    from globallocal.cli import app

    group = typer.main.get_command(app)
    options = [(name, param.opts[0]) for name, command in group.commands.items() for param in command.params
               if getattr(param, "type_descriptor", None) is not None and param.type_descriptor.annotation is int]
    assert ("evaluate", "--max-proposals") in options and ("serve", "--port") in options and len(options) > 30
    for command, option in options:
        for value in (str(2**64), str(-(2**63) - 1)):
            with pytest.raises(BadParameter, match=f"{value} does not fit in a 64-bit integer") as refused:
                group.main([command, option, value], standalone_mode=False)
            assert option in refused.value.format_message()
    # As the command line says it: one line, exit 2.
    result = cli("evaluate", "--max-proposals", str(2**64))
    assert _error_line(result).startswith(f"error: Invalid value for '--max-proposals': {2**64} does not fit in a "
                                          "64-bit integer (see `") and result.err.count("\n") == 1


@pytest.mark.parametrize(("phrase", "part"), [("\u200b\u200d", "the phrase is empty"),
                                              ("the \udce9 chair", "is not valid Unicode text")])
def test_unusable_phrases_are_refused_before_any_model(cli, example, tiny_args, tmp_path, no_models, phrase, part):
    line = _error_line(cli("segment", example["image"], phrase, "--masks", example["mask_dir"],
                           "-o", tmp_path / "m.png", *tiny_args))
    assert part in line


# ---- no partial output ---------------------------------------------------------------------------------------------


def test_an_output_through_a_file_is_refused_before_any_work(cli, example, tiny_args, tmp_path, no_models):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    mask = tmp_path / "m.png"
    line = _error_line(cli("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", mask,
                           "--json", blocker / "scores.json", *tiny_args))
    assert f"--json {blocker / 'scores.json'}: {blocker} is a file, not a folder" in line
    assert not mask.exists()


def test_an_output_that_cannot_be_written_leaves_none_behind(cli, example, tiny_args, tmp_path, monkeypatch):
    from globallocal.outputs import answers

    def refused(array, path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(answers, "save_png", refused)
    mask, overlay = tmp_path / "m.png", tmp_path / "o.png"
    line = _error_line(cli("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", mask,
                           "--overlay", overlay, *tiny_args))
    assert line == f"error: cannot write or read {overlay}: Permission denied; check its permissions or choose " \
                   "another location"
    assert not mask.exists() and not list(tmp_path.glob(".*.tmp"))


def test_all_or_none_renames_only_when_every_output_is_written(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old")
    with pytest.raises(RuntimeError), images.all_or_none():
        save_text("new", first)
        assert first.read_text() == "old"  # not yet in place
        raise RuntimeError("the second output failed")
    assert first.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))
    with images.all_or_none():
        save_text("new", first)
        save_text("two", second)
    assert (first.read_text(), second.read_text()) == ("new", "two")


# ---- memory on huge inputs -----------------------------------------------------------------------------------------


def test_a_huge_sparse_photo_is_refused_before_it_is_read(tmp_path):
    photo = tmp_path / "huge.jpg"
    with open(photo, "wb") as handle:
        handle.truncate(7 << 30)
    with pytest.raises(ImageError, match=r"image .*huge.jpg is 7 GiB, more than the .* allowed; .*GLOBALLOCAL_MAX_PIX"):
        load_image(photo)


def test_the_pixel_limit_is_what_the_pipeline_can_process_and_can_be_raised(tmp_path, monkeypatch):
    assert images.MAX_PIXELS == 25_000_000  # bench/memory.py: 6000x4000 peaks at 3.4 GB
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(photo)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError, match="40x30, more than 1000 pixels; .*set GLOBALLOCAL_MAX_PIXELS to raise"):
        load_image(photo)
    monkeypatch.setattr(images, "MAX_PIXELS", 1200)
    assert load_image(photo).size == (40, 30)


def test_the_resized_long_side_is_capped():
    assert short_side_size(427, 640) == (800, 1199) and short_side_size(640, 427) == (1199, 800)  # the paper's rule
    assert short_side_size(4, 4000) == (6, images.MAX_INPUT_SIDE)  # not 800x800000
    assert short_side_size(4000, 4, 2048) == (images.MAX_INPUT_SIDE, 6)
    assert short_side_size(1, 100_000) == (1, images.MAX_INPUT_SIDE)
    strip = Image.fromarray(np.zeros((4, 4000, 3), dtype=np.uint8))
    assert x800(strip).shape == (3, 6, images.MAX_INPUT_SIDE)
