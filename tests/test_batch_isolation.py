"""`globallocal batch` isolates every line: an unusable one goes to errors.jsonl, the others are answered."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image

from globallocal.data.bounded import MAX_LINE_BYTES
from globallocal.methods import get_method
from globallocal.runs.batch import ERRORS_FILE, RESULTS_FILE, run_batch
from globallocal.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = {"image": "img_44266.jpg", "phrase": "the chair", "masks": "masks"}
# What one hostile line holds (as the text of the line), and what errors.jsonl says of it.
BAD_LINES = {
    "nul id": (json.dumps({**GOOD, "id": "a\0b"}), "holds a control character"),
    "long id": (json.dumps({**GOOD, "id": "x" * 300}), "longer than 200 bytes, too long for a file name"),
    "surrogate phrase": ('{"image": "img_44266.jpg", "masks": "masks", "id": "s", "phrases": ["a", "\\ud800"]}',
                         "lone UTF-16 surrogate"),
    "nested": (json.dumps(GOOD)[:-1] + ', "id": "n", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
               "nests containers more than 32 levels"),
    "huge number": (json.dumps(GOOD)[:-1] + ', "id": ' + "9" * 5000 + "}", "an integer of thousands of digits"),
    "big number": (json.dumps(GOOD)[:-1] + ', "id": 1' + "0" * 400 + "}", "an integer beyond 64 bits at id"),
    "infinite": (json.dumps(GOOD)[:-1] + ', "id": Infinity}', "a number that is not finite (inf) at id"),
    "zero width": (json.dumps({**GOOD, "id": "z", "phrase": "\u200b\u200c"}), "the phrase is empty"),
    "long line": (json.dumps({**GOOD, "id": "l", "phrase": "x" * MAX_LINE_BYTES}), "is longer than 1 MiB"),
}


@pytest.fixture
def folder(tmp_path):
    shutil.copy(EXAMPLES / "img_44266.jpg", tmp_path)
    gt = np.asarray(Image.open(EXAMPLES / "mask_44266.png")) > 0
    (tmp_path / "masks").mkdir()
    for i, mask in enumerate((gt, ~gt)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"{i}.png")
    return tmp_path


@pytest.fixture
def segmenter(tiny_vit, nlp):
    return Segmenter(tiny_vit, nlp, get_method("global-local").settings("paper"))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_one_unusable_line_is_set_aside_and_the_rest_are_answered(folder, segmenter, case):
    line, reason = BAD_LINES[case]
    manifest = folder / "pairs.jsonl"
    manifest.write_text(json.dumps({**GOOD, "id": "first"}) + "\n" + line + "\n" + json.dumps({**GOOD, "id": "last"}))
    out = folder / "out"
    summary = run_batch(manifest, out, segmenter, progress=False)
    assert (summary["results"], summary["failed_lines"]) == (2, 1)
    assert [result["id"] for result in _lines(out / RESULTS_FILE)] == ["first", "last"]
    (error,) = _lines(out / ERRORS_FILE)
    assert error["line"] == 2 and reason in error["error"] and "\n" not in error["error"]
    # The failing line is recorded, so a resumed run finishes at once with the same files.
    before = (out / RESULTS_FILE).read_bytes(), (out / ERRORS_FILE).read_bytes()
    assert run_batch(manifest, out, segmenter, progress=False) == summary
    assert ((out / RESULTS_FILE).read_bytes(), (out / ERRORS_FILE).read_bytes()) == before


def test_a_phrase_beyond_the_parsers_limit_is_cut_and_answered(folder, segmenter):
    manifest = folder / "pairs.jsonl"
    manifest.write_text(json.dumps({**GOOD, "id": "huge", "phrase": "the chair " * 100_001}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_batch(manifest, folder / "out", segmenter, progress=False)
    assert (summary["results"], summary["failed_lines"]) == (1, 0)
    assert any("was cut to its first 2000" in str(warning.message) for warning in caught)


def test_a_csv_cell_beyond_the_csv_readers_limit_sets_aside_its_line_only(folder, segmenter):
    manifest = folder / "pairs.csv"
    rows = [f"img_44266.jpg,the chair,masks,{name}" for name in ("first", "big", "last")]
    rows[1] = "img_44266.jpg," + "the chair " * 20_000 + ",masks,big"  # a 200 KB cell: over csv's 128 KiB
    manifest.write_text("image,phrase,masks,id\n" + "\n".join(rows) + "\n")
    summary = run_batch(manifest, folder / "out", segmenter, progress=False)
    assert (summary["results"], summary["failed_lines"]) == (2, 1)
    assert [result["id"] for result in _lines(folder / "out" / RESULTS_FILE)] == ["first", "last"]
    (error,) = _lines(folder / "out" / ERRORS_FILE)
    assert error["line"] == 3 and error["error"] == "a cell is longer than 128 KiB, the most a CSV cell may hold"
