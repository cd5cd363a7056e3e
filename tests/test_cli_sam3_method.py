"""`--method sam3` on the command line, with a tiny random SAM 3 and no CLIP weights anywhere.

The CLI's masks equal SAM 3's own top instance (or the OR of the instances
it kept) as :class:`Sam3ConceptSource` gives them when used directly;
evaluate on the synthetic REFER and PhraseCut fixtures resumes to identical
records after an interruption; bad options and gated weights give one line
and exit 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from phrasecut_fixtures import build_phrasecut
from PIL import Image
from refer_fixtures import build_refer

from globallocal.data.images import load_mask
from globallocal.models.text import parse_phrase
from globallocal.proposals.concepts import concept_query
from globallocal.proposals.sam3 import Sam3ConceptSource
from globallocal.proposals.sam3_weights import load_sam3

pytestmark = pytest.mark.usefixtures("one_thread", "no_clip")

PHRASES = ["the dog on the left", "a red car"]
THRESHOLD = 0.1  # the tiny model keeps 5 of 8 instances of "the dog", 7 of "a red car"


@pytest.fixture
def no_clip(monkeypatch, tmp_path):
    """No CLIP can load: the hub cache is empty (offline), and loading one at all fails the test."""
    from huggingface_hub import constants

    import globallocal.segmenter

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("--method sam3 loaded a CLIP")

    monkeypatch.setattr(globallocal.segmenter, "load_clip", refuse)


def sam3_directly(folder, photo_file, phrases, nlp, prompt="noun-phrase"):
    """SAM 3's answers to the phrases from the proposal source itself, as the method prompts it."""
    source = Sam3ConceptSource.from_loaded(load_sam3(str(folder)), threshold=THRESHOLD)
    source.set_image(Image.open(photo_file).convert("RGB"))
    return source.answer([concept_query(parse_phrase(phrase, nlp), nlp, prompt) for phrase in phrases])


@pytest.mark.parametrize("answer", ["top", "union"])
def test_segment_writes_sam3s_own_answer(cli, photo_file, sam3_folder, tmp_path, nlp, answer):
    out, report = tmp_path / "out.png", tmp_path / "out.json"
    result = cli("segment", photo_file, *PHRASES, "--method", "sam3", "--sam3-weights", sam3_folder,
                 "--sam3-threshold", THRESHOLD, "--sam3-answer", answer, "-o", out, "--json", report)
    assert result.code == 0, result.err
    written = json.loads(report.read_text())
    assert written["method"] == "sam3" and written["clip"] is None and written["settings"]["answer"] == answer
    expected = sam3_directly(sam3_folder, photo_file, PHRASES, nlp)
    for number, (record, concept) in enumerate(zip(written["results"], expected, strict=True)):
        masks = concept.proposals.masks.numpy()
        assert concept.step == record["proposal_step"] == "noun-phrase" and len(masks) > 1
        mask = load_mask(tmp_path / f"out_{number}.png")
        if answer == "top":
            assert np.array_equal(mask, masks[0]) and record["index"] == 0
            assert record["score"] == float(concept.proposals.scores[0])
        else:
            assert np.array_equal(mask, masks.any(axis=0)) and record["index"] is None
            assert len(masks) < 8  # the threshold kept some instances, not all eight queries


def test_expression_prompt_and_max_proposals_reach_the_method(cli, photo_file, sam3_folder, tmp_path, nlp):
    report = tmp_path / "out.json"
    result = cli("segment", photo_file, PHRASES[0], "--method", "sam3", "--sam3-weights", sam3_folder,
                 "--sam3-threshold", THRESHOLD, "--sam3-prompt", "expression", "--sam3-answer", "union",
                 "--max-proposals", "1", "-o", tmp_path / "m.png", "--json", report)
    assert result.code == 0, result.err
    [record] = json.loads(report.read_text())["results"]
    [concept] = sam3_directly(sam3_folder, photo_file, PHRASES[:1], nlp, prompt="expression")
    assert record["proposal_prompt"] == parse_phrase(PHRASES[0], nlp).expression == concept.prompt
    assert len(record["scores"]) == 1  # the union of one instance: the best
    assert np.array_equal(load_mask(tmp_path / "m.png"), concept.proposals.masks[0].numpy())


def _interrupted_after_one_image(monkeypatch):
    """Make the next evaluate stop after its first image, as Ctrl-C would."""
    import globallocal.runs.evaluate as evaluate

    run = evaluate.run_evaluation
    monkeypatch.setattr(evaluate, "run_evaluation", lambda *a, **k: run(*a, **k, stop_after_images=1))
    return lambda: monkeypatch.setattr(evaluate, "run_evaluation", run)


def _records(out) -> list[dict]:
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return sorted((line for line in lines if "image_done" not in line), key=lambda line: json.dumps(line))


def _without_timing(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if "second" not in key} for record in records]


def killed_and_resumed(cli, monkeypatch, command: list, out) -> list[dict]:
    """Run an evaluate ``command`` into ``out`` killed after its first image, then again to the end; the records
    the killed run had written."""
    restore = _interrupted_after_one_image(monkeypatch)
    stopped = cli(*command, "--out", out)
    assert stopped.code == 130 and "resume" in stopped.err
    partial = _records(out)
    restore()
    resumed = cli(*command, "--out", out)
    assert resumed.code == 0, resumed.err
    return partial


@pytest.mark.parametrize("dataset", ["refcoco", "phrasecut"])
def test_evaluate_resumes_to_identical_records(cli, sam3_folder, tmp_path, monkeypatch, dataset):
    if dataset == "refcoco":
        refer = build_refer(tmp_path / "dataset")
        data = ["--data-root", refer.data_root, "--images", refer.images_dir]
    else:
        data = ["--data-root", build_phrasecut(tmp_path / "dataset").root]
    common = ["evaluate", "--dataset", dataset, "--split", "val", *data, "--method", "sam3",
              "--sam3-weights", sam3_folder, "--sam3-threshold", THRESHOLD, "--device", "cpu"]
    full = cli(*common, "--out", tmp_path / "full")
    assert full.code == 0, full.err
    config = json.loads((tmp_path / "full" / "config.json").read_text())["settings"]
    assert config["method"] == "sam3" and config["clip_model"] is None
    assert config["preset"] == ("sam3-union" if dataset == "phrasecut" else "sam3")

    partial = killed_and_resumed(cli, monkeypatch, common, tmp_path / "resumed")
    records = _records(tmp_path / "full")
    assert 0 < len(partial) < len(records)
    assert _without_timing(_records(tmp_path / "resumed")) == _without_timing(records)
    assert {record["proposal_step"] for record in records} <= {"noun-phrase", "head-noun", "below-threshold"}


def test_batch_answers_with_sam3(cli, photo_file, sam3_folder, tmp_path, nlp):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": str(photo_file), "phrases": PHRASES}) + "\n")
    result = cli("batch", manifest, "-o", tmp_path / "out", "--method", "sam3", "--sam3-weights", sam3_folder,
                 "--sam3-threshold", THRESHOLD)
    assert result.code == 0, result.err
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    expected = sam3_directly(sam3_folder, photo_file, PHRASES, nlp)
    assert [record["score"] for record in results] == [float(c.proposals.scores[0]) for c in expected]


def test_gated_weights_offline_are_one_line(run, photo_file, tmp_path):
    code, err = run("segment", photo_file, "the dog", "--method", "sam3", "-o", tmp_path / "m.png")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for part in ("facebook/sam3", "licence", "hf auth login", "--sam3-weights DIR"):
        assert part in err
    assert not (tmp_path / "m.png").exists()


def test_serve_loads_sam3_with_its_options(cli, photo_file, sam3_folder, monkeypatch, nlp):
    import socket

    import globallocal.serve

    served = []
    monkeypatch.setattr(globallocal.serve, "serve", lambda engine, *args, **kwargs: served.append(engine))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("serve", "--method", "sam3", "--sam3-weights", sam3_folder, "--sam3-threshold", THRESHOLD,
                 "--sam3-answer", "union", "--port", port)
    assert result.code == 0, result.err
    segmenter = served[0].segmenter()
    assert segmenter.clip is None and segmenter.settings.answer == "union"
    segmenter.set_image(photo_file)
    [concept] = sam3_directly(sam3_folder, photo_file, PHRASES[1:], nlp)
    assert np.array_equal(segmenter.predict(PHRASES[1]).mask.numpy(), concept.proposals.masks.numpy().any(axis=0))
