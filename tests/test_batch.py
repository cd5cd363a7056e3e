"""`globallocal batch`: manifests, grouping by photo, outputs, bad lines, resuming; tiny random CLIP, user masks."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image

from globallocal.data.coco_masks import decode
from globallocal.data.images import load_image, load_mask
from globallocal.data.manifest import read_manifest
from globallocal.errors import InputError
from globallocal.methods import get_method
from globallocal.proposals.files import load_proposals
from globallocal.runs.batch import ERRORS_FILE, RESULTS_FILE, BatchStopped, run_batch
from globallocal.runs.runfolder import RECORDS_FILE
from globallocal.segmenter import Segmenter

PHOTOS = ("44266", "80472")
# Six lines over the two example photos; line 4 names a photo that does not exist.
LINES = [
    {"image": "img_44266.jpg", "phrase": "the wooden chair", "masks": "masks_44266"},
    {"id": "table", "image": "img_44266.jpg", "phrases": ["the table", "a chair on the left"], "masks": "masks_44266"},
    {"id": "dog", "image": "img_80472.jpg", "phrase": "the dog", "masks": "masks_80472"},
    {"id": "ghost", "image": "missing.jpg", "phrase": "a cat", "masks": "masks_44266"},
    {"id": "cat", "image": "img_80472.jpg", "phrase": "the cat on the right", "masks": "masks_80472"},
    {"id": "chair", "image": "./img_44266.jpg", "phrase": "a chair", "masks": "masks_44266"},
]
OUTPUTS = ["1", "table_0", "table_1", "dog", "cat", "chair"]

PAPER = get_method("global-local").settings("paper")


class CountingSegmenter(Segmenter):
    """A Segmenter that counts set_image calls (the photos it paid for) and the phrases it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.photos: list[tuple[int, int]] = []
        self.asked: list[str] = []

    def set_image(self, image, proposals=None):
        self.photos.append(getattr(image, "size", None))
        super().set_image(image, proposals)

    def predict_many(self, phrases, require_noun=False):
        self.asked += phrases
        return super().predict_many(phrases, require_noun)


@pytest.fixture
def pairs(tmp_path):
    """The photos, three masks per photo, and the manifest as JSONL and CSV in one folder."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(EXAMPLES / f"img_{photo}.jpg", folder)
        gt = np.asarray(Image.open(EXAMPLES / f"mask_{photo}.png")) > 0
        box = np.zeros_like(gt)
        box[: gt.shape[0] // 2, : gt.shape[1] // 2] = True
        (folder / f"masks_{photo}").mkdir()
        for i, mask in enumerate((gt, box, ~gt)):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"masks_{photo}" / f"mask_{i}.png")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    with open(folder / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "phrase", "phrases", "masks"])
        writer.writeheader()
        for line in LINES:
            row = dict(line)
            if "phrases" in row:
                row["phrases"] = json.dumps(row["phrases"])
            writer.writerow(row)
    return folder


@pytest.fixture
def segmenter(tiny_vit, nlp):
    return CountingSegmenter(tiny_vit, nlp, PAPER)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(pairs, out, segmenter, manifest="pairs.jsonl", **kwargs):
    return run_batch(pairs / manifest, out, segmenter, progress=False, **kwargs)


def test_manifest_lines_and_their_errors(tmp_path):
    (tmp_path / "photos").mkdir()
    lines = [
        '{"image": "photos/a.jpg", "phrase": "a cat"}',
        "",
        '{"image": "photos/a.jpg", "phrases": ["x y", "the dog"], "id": 7}',
        "{not json",
        '{"phrase": "no image"}',
        '{"image": "b.jpg", "phrase": "   "}',
        '{"image": "b.jpg", "phrase": "a", "phrases": ["b"]}',
        '{"image": "b.jpg", "phrase": "a", "id": "7_1"}',
        '{"image": "b.jpg", "phrase": "a", "id": "../escape"}',
        '{"image": "/abs/c.jpg", "phrase": "a", "masks": "m", "extra": 1}',
        "[1, 2]",
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(tmp_path / "pairs.jsonl")
    assert [(line.line, line.id, line.output_ids) for line in manifest.lines] == [
        (1, "1", ("1",)), (3, "7", ("7_0", "7_1")),
    ]
    assert manifest.lines[0].image == tmp_path.resolve() / "photos" / "a.jpg"
    reasons = {error.line: error.reason for error in manifest.errors}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert "not valid JSON" in reasons[4] and reasons[5] == "no image" and "phrase is empty" in reasons[6]
    assert "either phrase or phrases" in reasons[7]
    assert reasons[8] == "duplicate id: '7_1' is already the output of line 3"
    assert "cannot name a mask file" in reasons[9] and "unknown key 'extra'" in reasons[10]
    assert reasons[11] == "not a JSON object" and manifest.line_count == 10

    (tmp_path / "pairs.txt").write_text("")
    with pytest.raises(InputError, match="must end in .jsonl"):
        read_manifest(tmp_path / "pairs.txt")
    (tmp_path / "bad.csv").write_text("photo,text\na.jpg,a cat\n")
    with pytest.raises(InputError, match="CSV header must name image and phrase"):
        read_manifest(tmp_path / "bad.csv")


def test_csv_and_jsonl_manifests_are_the_same_lines(pairs):
    jsonl, table = read_manifest(pairs / "pairs.jsonl"), read_manifest(pairs / "pairs.csv")

    def content(line):
        return line.image, line.phrases, line.masks

    assert [content(line) for line in jsonl.lines] == [content(line) for line in table.lines]
    assert len(jsonl.lines) == 6 and jsonl.lines[1].phrases == ("the table", "a chair on the left")
    assert jsonl.lines[1].image == (pairs / "img_44266.jpg").resolve()
    # The CSV's header is its line 1, so a default id (the line number) is one more.
    assert [line.line + 1 for line in jsonl.lines] == [line.line for line in table.lines]
    assert [line.id for line in table.lines] == ["2", "table", "dog", "ghost", "cat", "chair"]


def test_batch_outputs_grouped_by_photo(pairs, tmp_path, segmenter, tiny_vit, nlp):
    out = tmp_path / "out"
    summary = _run(pairs, out, segmenter, rle=True, overlays=True)
    assert summary == {
        "lines": 6, "photos": 3, "results": 6, "failed_outputs": 1, "failed_lines": 1, "retried_units": 0,
        "results_file": str(out / RESULTS_FILE), "errors_file": str(out / ERRORS_FILE),
    }
    # Photo 44266 is named by three lines (two spellings of its path), paid for once; the missing one never.
    assert len(segmenter.photos) == 2

    errors = _jsonl(out / ERRORS_FILE)
    assert len(errors) == 1 and errors[0]["line"] == 4 and errors[0]["id"] == "ghost"
    assert "missing.jpg" in errors[0]["error"]

    results = _jsonl(out / RESULTS_FILE)
    assert [r["id"] for r in results] == OUTPUTS
    assert [r["line"] for r in results] == [1, 2, 2, 3, 5, 6]
    reference = Segmenter(tiny_vit, nlp, PAPER)  # an independent run, photo by photo
    for record in results:
        photo = "44266" if "44266" in record["image"] else "80472"
        picture = load_image(pairs / f"img_{photo}.jpg")
        proposals = load_proposals(pairs / f"masks_{photo}", (picture.height, picture.width))
        reference.set_image(picture, proposals)
        expected = reference.predict(record["phrase"])
        assert (record["index"], record["noun_phrase"]) == (expected.index, expected.noun_phrase)
        # Phrases of a photo are scored in one batch here, one at a time there: float noise only.
        assert record["score"] == pytest.approx(float(expected.scores[expected.index]), rel=1e-5)
        saved = np.asarray(Image.open(out / record["mask"]))
        assert saved.shape == (picture.height, picture.width) and set(np.unique(saved)) <= {0, 255}
        np.testing.assert_array_equal(saved > 0, expected.mask.numpy())
        np.testing.assert_array_equal(decode(record["rle"]) > 0, expected.mask.numpy())
        assert load_mask(out / record["overlay"]).shape[:2] == (picture.height, picture.width)
    assert record["mask"] == "masks/chair.png"


def test_bad_lines_are_set_aside_and_the_batch_goes_on(pairs, tmp_path, segmenter):
    (pairs / "broken.jpg").write_bytes(b"not an image at all")
    lines = [
        {"image": "img_44266.jpg", "phrase": "the chair", "masks": "masks_44266"},
        {"image": "broken.jpg", "phrase": "a thing", "masks": "masks_44266"},
        {"image": "img_44266.jpg", "phrase": "", "masks": "masks_44266"},
        {"id": "1", "image": "img_44266.jpg", "phrase": "the chair again", "masks": "masks_44266"},
        {"image": "img_80472.jpg", "phrase": "the chair", "masks": "masks_44266"},
        {"image": "img_80472.jpg", "phrase": "far right", "masks": "masks_80472"},
    ]
    (pairs / "bad.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = _run(pairs, tmp_path / "out", segmenter, manifest="bad.jsonl")
    assert summary["results"] == 1 and summary["failed_lines"] == 5
    reasons = {error["line"]: error["error"] for error in _jsonl(tmp_path / "out" / ERRORS_FILE)}
    assert "broken.jpg" in reasons[2] and "phrase is empty" in reasons[3]
    assert "duplicate id: '1'" in reasons[4] and "masks must be at the image's size" in reasons[5]
    assert "no noun found in the phrase 'far right'" in reasons[6]


def test_without_a_terminal_the_progress_is_lines(pairs, tmp_path, segmenter, capsys):
    run_batch(pairs / "pairs.jsonl", tmp_path / "out", segmenter)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"batch: 1/3 photos, [\d.]+ img/s, eta \d+s, 0 lines failed", lines[0]), lines
    assert re.fullmatch(r"batch: 3/3 photos, [\d.]+ img/s, eta 0s, 1 line failed", lines[-1]), lines


def test_stop_and_resume_gives_identical_outputs(pairs, tmp_path, segmenter, tiny_vit, nlp):
    _run(pairs, tmp_path / "full", segmenter)
    out = tmp_path / "resumed"
    with pytest.raises(BatchStopped):
        _run(pairs, out, CountingSegmenter(tiny_vit, nlp, PAPER), stop_after_units=1)
    assert not (out / RESULTS_FILE).exists()
    # A torn line, as a kill while writing the second photo's records leaves.
    with open(out / RECORDS_FILE, "ab") as handle:
        handle.write(b'{"unit": 1, "line": 3, "id": "do')
    again = CountingSegmenter(tiny_vit, nlp, PAPER)
    _run(pairs, out, again)
    assert len(again.photos) == 1  # the first photo is not redone; the missing one costs nothing
    for name in (RESULTS_FILE, ERRORS_FILE):
        assert (out / name).read_text() == (tmp_path / "full" / name).read_text()
    records = [{k: v for k, v in entry.items() if k != "seconds"} for entry in _jsonl(out / RECORDS_FILE)]
    full = [{k: v for k, v in entry.items() if k != "seconds"} for entry in _jsonl(tmp_path / "full" / RECORDS_FILE)]
    assert records == full
    for name in OUTPUTS:
        mask = f"masks/{name}.png"
        assert (out / mask).read_bytes() == (tmp_path / "full" / mask).read_bytes()

    finished = CountingSegmenter(tiny_vit, nlp, PAPER)
    recorded = (out / RECORDS_FILE).read_bytes()
    _run(pairs, out, finished)
    assert finished.photos == [] and (out / RECORDS_FILE).read_bytes() == recorded


def test_csv_gives_the_results_of_jsonl(pairs, tmp_path, segmenter):
    _run(pairs, tmp_path / "jsonl", segmenter)
    _run(pairs, tmp_path / "csv", segmenter, manifest="pairs.csv")
    from_jsonl, from_csv = _jsonl(tmp_path / "jsonl" / RESULTS_FILE), _jsonl(tmp_path / "csv" / RESULTS_FILE)
    # The CSV's lines are one further down (its header); the default id of the first line follows its line number.
    assert [r["line"] + 1 for r in from_jsonl] == [r["line"] for r in from_csv]
    for a, b in zip(from_jsonl, from_csv):
        same = ("image", "phrase", "noun_phrase", "index", "score")
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        assert (tmp_path / "jsonl" / a["mask"]).read_bytes() == (tmp_path / "csv" / b["mask"]).read_bytes()


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_fixed_line_is_all_a_rerun_does(pairs, tmp_path, tiny_vit, nlp):
    chair = {"id": "chair", "image": "img_44266.jpg", "phrase": "the wooden chair", "masks": "masks_44266"}
    dog = {"id": "dog", "image": "img_8047.jpg", "phrase": "the dog", "masks": "masks_80472"}  # a typo
    table = {"id": "table", "image": "img_44266.jpg", "phrase": "", "masks": "masks_44266"}  # no phrase
    _write(pairs / "three.jsonl", [chair, dog, table])
    out, first = tmp_path / "out", CountingSegmenter(tiny_vit, nlp, PAPER)
    summary = _run(pairs, out, first, manifest="three.jsonl")
    assert (summary["results"], summary["failed_lines"]) == (1, 2) and first.asked == ["the wooden chair"]
    assert [(e["line"], e["id"]) for e in _jsonl(out / ERRORS_FILE)] == [(2, "dog"), (3, "table")]

    # The photo's path fixed: that line alone runs.
    _write(pairs / "three.jsonl", [chair, {**dog, "image": "img_80472.jpg"}, table])
    second = CountingSegmenter(tiny_vit, nlp, PAPER)
    summary = _run(pairs, out, second, manifest="three.jsonl")
    assert second.photos == [(640, 427)] and second.asked == ["the dog"]
    assert (summary["results"], summary["failed_lines"]) == (2, 1)
    assert [(e["line"], e["id"]) for e in _jsonl(out / ERRORS_FILE)] == [(3, "table")]

    # The phrase fixed: its photo is done again for that phrase alone, the chair's answer kept.
    _write(pairs / "three.jsonl", [chair, {**dog, "image": "img_80472.jpg"}, {**table, "phrase": "the table"}])
    third = CountingSegmenter(tiny_vit, nlp, PAPER)
    summary = _run(pairs, out, third, manifest="three.jsonl")
    assert len(third.photos) == 1 and third.asked == ["the table"]
    assert (summary["results"], summary["failed_lines"], summary["failed_outputs"]) == (3, 0, 0)
    assert [(r["line"], r["id"]) for r in _jsonl(out / RESULTS_FILE)] == [(1, "chair"), (2, "dog"), (3, "table")]
    assert (out / ERRORS_FILE).read_text() == ""
    # Each unit recorded once: the photos under their numbers, the fixes under fresh ones.
    assert [unit["unit_done"] for unit in _jsonl(out / RECORDS_FILE) if "unit_done" in unit] == [0, 1, 2, 3]

    # The same lines in one fresh run give the same answers (the chair's scored with the table's there: float noise).
    _run(pairs, tmp_path / "fresh", CountingSegmenter(tiny_vit, nlp, PAPER), manifest="three.jsonl")
    for rerun, fresh in zip(_jsonl(out / RESULTS_FILE), _jsonl(tmp_path / "fresh" / RESULTS_FILE), strict=True):
        assert {**rerun, "score": pytest.approx(fresh["score"], rel=1e-5)} == fresh
        assert (out / rerun["mask"]).read_bytes() == (tmp_path / "fresh" / fresh["mask"]).read_bytes()


def test_a_rerun_reports_the_manifests_lines_under_their_numbers_now(pairs, tmp_path, tiny_vit, nlp):
    out = tmp_path / "out"
    _run(pairs, out, CountingSegmenter(tiny_vit, nlp, PAPER))
    # Line 1 (id "1", its line number) and the missing photo removed, a line added at the top.
    added = {"id": "bag", "image": "img_80472.jpg", "phrase": "the bag", "masks": "masks_80472"}
    _write(pairs / "pairs.jsonl", [added, *LINES[1:3], *LINES[4:]])
    again = CountingSegmenter(tiny_vit, nlp, PAPER)
    summary = _run(pairs, out, again)
    assert again.asked == ["the bag"]
    assert (summary["lines"], summary["results"], summary["failed_lines"]) == (5, 6, 0)
    results = _jsonl(out / RESULTS_FILE)
    assert [(r["line"], r["id"]) for r in results] == [
        (1, "bag"), (2, "table_0"), (2, "table_1"), (3, "dog"), (4, "cat"), (5, "chair"),
    ]
    assert all("key" not in r and "unit" not in r for r in results)
    assert (out / ERRORS_FILE).read_text() == ""
    assert (out / "masks" / "1.png").exists()  # a removed line's files stay


def test_a_line_changed_and_changed_back_is_redone(pairs, tmp_path, tiny_vit, nlp):
    """Its mask file holds the changed line's answer by then, so the first record is not reused."""
    line = {"id": "it", "image": "img_44266.jpg", "phrase": "the wooden chair", "masks": "masks_44266"}
    out = tmp_path / "out"
    for phrase in ("the wooden chair", "the table", "the wooden chair"):
        _write(pairs / "one.jsonl", [{**line, "phrase": phrase}])
        segmenter = CountingSegmenter(tiny_vit, nlp, PAPER)
        _run(pairs, out, segmenter, manifest="one.jsonl")
        assert segmenter.asked == [phrase]
    _run(pairs, tmp_path / "fresh", CountingSegmenter(tiny_vit, nlp, PAPER), manifest="one.jsonl")
    assert (out / "masks" / "it.png").read_bytes() == (tmp_path / "fresh" / "masks" / "it.png").read_bytes()
    assert (out / RESULTS_FILE).read_text() == (tmp_path / "fresh" / RESULTS_FILE).read_text()


def test_other_settings_do_not_resume(pairs, tmp_path, segmenter):
    with pytest.raises(BatchStopped):
        _run(pairs, tmp_path / "out", segmenter, stop_after_units=1)
    with pytest.raises(InputError) as caught:
        _run(pairs, tmp_path / "out", segmenter, rle=True)
    assert str(caught.value) == (
        f"{tmp_path / 'out'} holds a run with a different configuration; use another --out or delete that "
        "directory; it differs in:\n  rle: run false, now true"
    )


def test_cli_batch(cli, pairs, tmp_path, tiny_config_paths, tiny_checkpoints):
    out = tmp_path / "out"
    args = ["batch", pairs / "pairs.jsonl", "-o", out, "--clip-model", tiny_config_paths["vit"],
            "--clip-weights", tiny_checkpoints["vit"], "--rle"]
    result = cli(*args)
    assert result.code == 1, result.err  # one line failed
    assert "6 masks from 6 lines (3 photos)" in result.err and "1 line failed" in result.err
    assert "Traceback" not in result.err
    assert [r["id"] for r in _jsonl(out / RESULTS_FILE)] == OUTPUTS
    assert all("rle" in r for r in _jsonl(out / RESULTS_FILE))
    before = (out / RESULTS_FILE).read_text()
    assert cli(*args).code == 1 and (out / RESULTS_FILE).read_text() == before

    # A single --masks for lines without their own: the photo of another size fails, and says so.
    (pairs / "plain.jsonl").write_text(json.dumps({"image": "img_80472.jpg", "phrase": "a dog"}) + "\n")
    result = cli("batch", pairs / "plain.jsonl", "-o", tmp_path / "plain", "--masks", pairs / "masks_44266",
                 "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"])
    assert result.code == 1 and "1 line failed" in result.err
    assert "masks must be at the image's size" in _jsonl(tmp_path / "plain" / ERRORS_FILE)[0]["error"]

    result = cli("batch", pairs / "absent.jsonl", "-o", tmp_path / "x")
    assert result.code == 2 and result.err.startswith("error: manifest not found")


def test_cli_batch_takes_the_method(cli, pairs, tmp_path, tiny_config_paths, tiny_checkpoints):
    common = ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]
    result = cli("batch", pairs / "pairs.jsonl", "-o", tmp_path / "a", "--method", "nope", *common)
    assert result.code == 2 and "unknown method 'nope'" in result.err
    # Options of another method are refused before any model loads.
    result = cli("batch", pairs / "pairs.jsonl", "-o", tmp_path / "b", "--fusion-mode", "L2G", *common)
    assert result.code == 2 and "--fusion-mode does not apply to --method global-local" in result.err
    result = cli("batch", pairs / "pairs.jsonl", "-o", tmp_path / "c", "--method", "tcl", "--masks",
                 pairs / "masks_44266", *common)
    assert result.code == 2 and "--masks does not apply to --method tcl" in result.err
    # The run records the method and its settings.
    result = cli("batch", pairs / "pairs.jsonl", "-o", tmp_path / "d", *common)
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["settings"]["method"] == "global-local" and config["settings"]["alpha"] == 0.95


def test_a_turned_photo_is_said_so_and_a_warning_about_masks_names_its_lines(tmp_path, segmenter):
    folder = tmp_path / "pairs"
    (folder / "masks").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown a quarter turn clockwise: 30 wide, 40 high
    Image.fromarray(np.full((30, 40, 3), 90, dtype=np.uint8)).save(folder / "turned.jpg", exif=exif)
    for name, rows in (("a.png", slice(0, 20)), ("b.png", slice(20, 40)), ("empty.png", slice(0, 0))):
        mask = np.zeros((40, 30), dtype=np.uint8)
        mask[rows] = 255
        Image.fromarray(mask).save(folder / "masks" / name)
    lines = [{"image": "turned.jpg", "phrase": phrase, "masks": "masks"} for phrase in ("the top", "the bottom")]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.warns(UserWarning, match=r"^lines 1, 2: 1 of 3 masks in .*masks are empty and were dropped"):
        summary = _run(folder, tmp_path / "out", segmenter)
    assert summary["results"] == 2
    assert [r["photo"] for r in _jsonl(tmp_path / "out" / RESULTS_FILE)] == [{"exif_orientation": 6, "frames": 1}] * 2
