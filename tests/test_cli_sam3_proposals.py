"""`--proposals sam3` end to end on the command line, with a tiny random SAM 3 and tiny random CLIPs.

The CLI's answers equal the method's among SAM 3's own instances of the
noun phrase given as proposals; evaluate, sweep and batch take SAM 3's
candidates per sentence; the presets bring SAM 3 by default; bad SAM 3
options and gated weights give one line and exit 2 before any model loads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from refer_fixtures import build_refer

from globallocal.data.images import load_mask
from globallocal.methods import build_method
from globallocal.models.clip import load_clip
from globallocal.proposals.sources import build_proposal_generator
from globallocal.runs.report import format_report_text
from globallocal.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

CLIPS = {"global-local": "vit", "hybridgl": "vit12"}
PHRASES = ["the dog on the left", "a red car"]
THRESHOLD = "0.1"  # the tiny model's scores spread over about 0.05-0.4


def _clip_args(method, tiny_config_paths, tiny_checkpoints):
    family = CLIPS[method]
    return ["--method", method, "--clip-model", tiny_config_paths[family], "--clip-weights", tiny_checkpoints[family]]


@pytest.mark.parametrize("method", list(CLIPS))
def test_segment_answers_among_sam3s_instances_as_among_given_masks(
    cli, method, photo_file, sam3_folder, tmp_path, tiny_config_paths, tiny_checkpoints, nlp
):
    out, report = tmp_path / "out.png", tmp_path / "out.json"
    result = cli("segment", photo_file, *PHRASES, *_clip_args(method, tiny_config_paths, tiny_checkpoints),
                 "--proposals", "sam3", "--sam3-weights", sam3_folder, "--sam3-threshold", THRESHOLD,
                 "-o", out, "--json", report, "--top-k-picture", tmp_path / "top.png")
    assert result.code == 0, result.err
    written = json.loads(report.read_text())
    assert written["proposal_source"] == "sam3"

    # The same answers by hand: SAM 3's instances of each noun phrase, given to the method as proposals.
    family = CLIPS[method]
    clip = load_clip(str(tiny_config_paths[family]), str(tiny_checkpoints[family]))
    source = build_proposal_generator("sam3", weights=sam3_folder, sam3_threshold=float(THRESHOLD))
    segmenter = Segmenter(clip, nlp, method=build_method(method, clip, nlp))
    source.set_image(Image.open(photo_file).convert("RGB"))
    queries = [segmenter.method.concept_query(segmenter.parse(phrase)) for phrase in PHRASES]
    answers = source.answer(queries)  # one batch, as the segmenter asks
    for number, (record, answer) in enumerate(zip(written["results"], answers, strict=True)):
        assert (record["proposal_step"], record["proposal_prompt"]) == (answer.step, answer.prompt)
        assert record["proposal_scores"] == [float(score) for score in answer.proposals.scores]
        segmenter.set_image(photo_file, answer.proposals)
        expected = segmenter.predict(record["phrase"])
        assert record["index"] == expected.index
        assert record["proposal_score"] == record["proposal_scores"][expected.index]
        assert np.array_equal(load_mask(tmp_path / f"out_{number}.png"), expected.mask.numpy())
        assert (tmp_path / f"top_{number}.png").is_file()


def test_the_sam3_presets_bring_sam3_and_are_in_the_help(cli, photo_file, sam3_folder, tmp_path, tiny_config_paths,
                                                        tiny_checkpoints):
    help_text = cli("segment", "--help").out
    assert "global-local-sam3" in help_text and "hybridgl-sam3" in help_text and "--sam3-fallback" in help_text
    report = tmp_path / "out.json"
    result = cli("segment", photo_file, "the dog", *_clip_args("hybridgl", tiny_config_paths, tiny_checkpoints),
                 "--preset", "hybridgl-sam3", "--sam3-weights", sam3_folder, "-o", tmp_path / "m.png",
                 "--json", report)
    assert result.code == 0, result.err
    written = json.loads(report.read_text())
    # The default threshold (0.5) is above every tiny instance: the chain ends at the best ones below it.
    assert written["proposal_source"] == "sam3" and written["results"][0]["proposal_step"] == "below-threshold"


@pytest.mark.parametrize("method", [["--proposals", "sam3", "--method", "global-local"], ["--method", "sam3"]])
def test_no_candidate_is_no_target_for_a_selector_and_for_sam3_alike(cli, photo_file, sam3_folder, tmp_path,
                                                                     tiny_config_paths, tiny_checkpoints, method):
    """One rule: a phrase whose noun phrase finds nothing is answered "no target" (an empty mask, exit 0, a
    warning naming it), whether a selector among SAM 3's candidates or SAM 3 alone answers; in a batch too."""
    clip = _clip_args("global-local", tiny_config_paths, tiny_checkpoints) if method != ["--method", "sam3"] else []
    options = [*method, *clip, "--sam3-weights", sam3_folder, "--sam3-fallback", "none", "--sam3-threshold", "1"]
    report = tmp_path / "out.json"
    result = cli("segment", photo_file, "the dog", "-o", tmp_path / "m.png", "--json", report, *options)
    assert result.code == 0, result.err
    assert "no target for the phrase 'the dog'" in result.err and "--sam3-threshold" in result.err
    assert not load_mask(tmp_path / "m.png").any()
    [answer] = json.loads(report.read_text())["results"]
    assert (answer["index"], answer["area"], answer["proposal_step"]) == (None, 0, "none")
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": str(photo_file), "phrase": "the dog"}) + "\n")
    result = cli("batch", manifest, "-o", tmp_path / "out", *options)
    assert result.code == 0, result.err
    [record] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert (record["index"], record["proposal_step"], record["sam3_step"]) == (None, "none", "none")
    assert not load_mask(tmp_path / "out" / record["mask"]).any()
    assert not (tmp_path / "out" / "errors.jsonl").exists() or not (tmp_path / "out" / "errors.jsonl").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["--proposals", "sam3", "--sam3-fallback", "head"], "unknown SAM 3 fallback step 'head'"),
    (["--proposals", "sam3", "--sam3-threshold", "1.5"], "SAM 3 threshold must be in [0, 1]"),
    (["--proposals", "sam3", "--max-proposals", "0"], "max_proposals must be at least 1"),
    (["--proposals", "sam3", "--sam3-weights", "nowhere"], "does not exist or is not a folder"),
    (["--proposals", "sam", "--sam3-threshold", "0.3"], "--sam3-threshold applies to --proposals sam3"),
    (["--method", "tcl", "--sam3-weights", "x"], "--sam3-weights does not apply to --method tcl"),
])
def test_bad_sam3_options_are_refused_before_any_model_loads(run, photo_file, tmp_path, extra, message):
    # The CLIP named here does not exist: reaching a model load would fail with another message.
    code, err = run("segment", photo_file, "the dog", "--clip-model", tmp_path / "absent.json", *extra,
                    "-o", tmp_path / "m.png")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_gated_weights_offline_name_the_repository_and_the_fix(run, photo_file, tmp_path, tiny_config_paths,
                                                               tiny_checkpoints, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, err = run("segment", photo_file, "the dog", *_clip_args("global-local", tiny_config_paths, tiny_checkpoints),
                    "--proposals", "sam3", "-o", tmp_path / "m.png")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for part in ("facebook/sam3", "licence", "hf auth login", "--sam3-weights DIR"):
        assert part in err


@pytest.mark.parametrize("method", list(CLIPS))
def test_evaluate_then_sweep_and_report(cli, method, sam3_folder, tmp_path, tiny_config_paths, tiny_checkpoints):
    refer = build_refer(tmp_path / "dataset")
    out = tmp_path / "run"
    common = ["--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root, "--images", refer.images_dir,
              *_clip_args(method, tiny_config_paths, tiny_checkpoints), "--sam3-weights", sam3_folder,
              "--sam3-threshold", THRESHOLD, "--cache", tmp_path / "cache", "--device", "cpu"]
    result = cli("evaluate", *common, "--preset", f"{method}-sam3", "--out", out)
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    sentences = [record for record in records if "image_done" not in record]
    assert {record["proposal_step"] for record in sentences} <= {"noun-phrase", "head-noun", "below-threshold"}
    assert all(len(record["overlaps"]) == len(record["proposal_scores"]) for record in sentences)
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["proposals"] == "sam3" and config["settings"]["sam3"]["threshold"] == 0.1
    assert config["settings"]["preset"] == f"{method}-sam3"

    sweep_args = ["--beta", "0.3,0.5"] + (["--alpha", "0.5,0.95"] if method == "global-local" else [])
    result = cli("sweep", out, *sweep_args)
    assert result.code == 0, result.err
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert sweep["run"]["sentences_differing"] == 0

    paper = tmp_path / "paper"
    result = cli("evaluate", *common[:8], *_clip_args(method, tiny_config_paths, tiny_checkpoints), "--proposals",
                 "gt", "--out", paper, "--device", "cpu")
    assert result.code == 0, result.err
    table = format_report_text([out, paper], "markdown")
    header = table.splitlines()[0]
    assert "preset" in header and "proposals" in header
    assert f"{method}-sam3" in table and "| gt |" in table


def test_batch_takes_sam3_candidates_per_phrase(cli, photo_file, sam3_folder, tmp_path, tiny_config_paths,
                                                tiny_checkpoints):
    manifest = tmp_path / "pairs.jsonl"
    lines = [{"id": "a", "image": str(photo_file), "phrases": PHRASES},
             {"id": "b", "image": str(photo_file), "phrase": "dog"}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = cli("batch", manifest, "-o", tmp_path / "out", *_clip_args("global-local", tiny_config_paths,
                 tiny_checkpoints), "--proposals", "sam3", "--sam3-weights", sam3_folder, "--sam3-threshold",
                 THRESHOLD)
    assert result.code == 0, result.err
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 3
    for record in results:
        assert record["proposal_score"] == record["proposal_scores"][record["index"]]
        assert record["proposal_step"] in ("noun-phrase", "head-noun", "below-threshold")


def test_the_python_api_takes_the_sam3_source(photo_file, sam3_folder, tiny_config_paths, tiny_checkpoints):
    source = build_proposal_generator("sam3", weights=sam3_folder, sam3_threshold=float(THRESHOLD))
    segmenter = Segmenter.from_pretrained(str(tiny_config_paths["vit12"]), str(tiny_checkpoints["vit12"]),
                                          "hybridgl-sam3", method="hybridgl", proposal_source=source)
    assert segmenter.phrase_dependent
    segmenter.set_image(photo_file)
    left, right = segmenter.predict_many(["the dog on the left", "the dog on the right"])
    assert left.concept is right.concept  # one noun phrase, one decode
    assert left.to_json()["proposal_step"] == left.concept.step and left.index in left.candidates


def test_a_phrase_without_candidates_gets_an_empty_mask_and_a_warning(cli, example, tmp_path, tiny_config_paths,
                                                                      tiny_checkpoints, monkeypatch):
    from concept_fixtures import FakeConceptSource, table_masks

    from globallocal.commands.options import ProposalArgs

    source = FakeConceptSource(table_masks({"the wooden chair": example["masks"][:2]}))
    monkeypatch.setattr(ProposalArgs, "build", lambda self, device, keep_order=False, precision="fp32": source)
    monkeypatch.setattr(ProposalArgs, "missing_files", lambda self: [])  # the stand-in needs no SAM 3 weights
    report = tmp_path / "out.json"
    result = cli("segment", example["image"], "the wooden chair", "a purple giraffe",
                 *_clip_args("global-local", tiny_config_paths, tiny_checkpoints), "--proposals", "sam3",
                 "-o", tmp_path / "m.png", "--json", report, "--top-k-picture", tmp_path / "top.png")
    assert result.code == 0, result.err
    assert "found no instance of 'a purple giraffe'" in result.err
    chair, giraffe = json.loads(report.read_text())["results"]
    assert chair["proposal_step"] == "noun-phrase" and chair["index"] in (0, 1) and "box" in chair
    assert (giraffe["index"], giraffe["proposal_step"], giraffe["area"]) == (None, "none", 0)
    assert not load_mask(tmp_path / "m_1.png").any() and (tmp_path / "top_1.png").is_file()


def test_report_puts_the_baseline_the_combinations_and_a_paper_preset_side_by_side(
    tmp_path, sam3_folder, nlp, tiny_config_paths, tiny_checkpoints
):
    from globallocal.runs.evaluate import EvaluationConfig, run_evaluation

    refer = build_refer(tmp_path / "dataset")
    runs = []
    for method, preset in [("sam3", "sam3"), ("global-local", "global-local-sam3"), ("hybridgl", "hybridgl-sam3"),
                           ("global-local", "paper-refcoco")]:
        family = CLIPS.get(method, "vit")
        clip = load_clip(str(tiny_config_paths[family]), str(tiny_checkpoints[family]))
        options = {"weights": str(sam3_folder)} if method == "sam3" else None
        built = build_method(method, clip, nlp, preset, options, **({"threshold": 0.1} if method == "sam3" else {}))
        proposals = "none" if method == "sam3" else "gt" if preset.startswith("paper") else "sam3"
        source = build_proposal_generator("sam3", weights=sam3_folder, sam3_threshold=0.1) if proposals == "sam3" \
            else None
        segmenter = Segmenter(clip, nlp, proposal_source=source, method=built)
        out = tmp_path / preset
        config = EvaluationConfig(dataset="refcoco", split="val", data_root=refer.data_root,
                                  images_dir=refer.images_dir, out_dir=out,
                                  settings={**built.describe(), "preset": preset, "proposals": proposals})
        run_evaluation(config, segmenter, "gt" if proposals == "gt" else None, progress=False)
        runs.append(out)
    lines = format_report_text(runs, "markdown").splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert {"method", "preset", "proposals", "mIoU"} <= set(header)
    column = header.index("preset")
    assert [row.strip("|").split("|")[column].strip() for row in lines[2:]] == [
        "sam3", "global-local-sam3", "hybridgl-sam3", "paper-refcoco"]


def test_the_proposals_command_refuses_a_per_phrase_source(run, photo_file, tmp_path):
    code, err = run("proposals", photo_file, "-o", tmp_path / "p", "--proposals", "sam3")
    assert code == 2 and "sam3 proposes per phrase, not per photo" in err and not (tmp_path / "p").exists()
