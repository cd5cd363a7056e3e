"""--method vlm on the command line: an endpoint's box picks a user's mask; the agent runs end to end on tiny
random models (SAM 3 and a Qwen VLM); bad options and an endpoint that does not answer are one line, exit 2,
nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_server import ChatServer
from PIL import Image

from globallocal.data.images import load_mask

pytestmark = pytest.mark.usefixtures("one_thread")

BOXES = [(2, 2, 20, 30), (30, 5, 50, 40), (52, 10, 62, 20)]


@pytest.fixture
def masks_dir(tmp_path, photo_file):
    """Three rectangles as a folder of PNG masks at the photo's size (64 x 48)."""
    folder = tmp_path / "masks"
    folder.mkdir()
    for number, (x0, y0, x1, y1) in enumerate(BOXES):
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(mask).save(folder / f"{number:03d}.png")
    return folder


def endpoint(server: ChatServer) -> list[str]:
    return ["--vlm-backend", "openai", "--vlm-url", server.url, "--vlm-model", "Qwen/Qwen3-VL-8B-Instruct"]


def test_the_endpoints_box_picks_the_candidate_it_points_at(cli, photo_file, masks_dir, tmp_path):
    # Candidate 1, (30, 5)-(50, 40) on the 64 x 48 photo, on Qwen3-VL's 0-1000 grid.
    box = '```json\n[{"bbox_2d": [469, 104, 781, 833], "label": "man"}]\n```'
    with ChatServer([box]) as server:
        result = cli("segment", photo_file, "the man on the left", "--method", "vlm", "--preset", "box",
                     *endpoint(server), "--masks", masks_dir, "-o", tmp_path / "out.png", "--json", tmp_path / "a.json")
        sent = server.requests[0]["body"]
    assert result.code == 0, result.err
    assert np.array_equal(load_mask(tmp_path / "out.png"), load_mask(masks_dir / "001.png"))
    [answer] = json.loads((tmp_path / "a.json").read_text())["results"]
    assert (answer["index"], answer["answer_set"], answer["outcome"]) == (1, [1], "select")
    assert answer["vlm"]["box_candidate"] == 1 and answer["transcript"][0]["reply"] == box
    image_part = sent["messages"][0]["content"][0]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")


def test_an_endpoint_that_does_not_answer_is_one_line_and_writes_nothing(cli, photo_file, masks_dir, tmp_path):
    with ChatServer(["unused"], faults=[503] * 3) as server:
        result = cli("segment", photo_file, "the man", "--method", "vlm", "--preset", "box", *endpoint(server),
                     "--masks", masks_dir, "-o", tmp_path / "out.png", "--json", tmp_path / "a.json")
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and lines[-1].startswith("error:") and server.url in lines[-1] and "503" in lines[-1]
    assert "Traceback" not in result.err
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "a.json").exists()


def test_the_agent_runs_end_to_end_on_tiny_models(cli, photo_file, sam3_folder, vlm_folders, tmp_path):
    result = cli("segment", photo_file, "the dog on the left", "--method", "vlm", "--sam3-weights", sam3_folder,
                 "--vlm-model", vlm_folders["qwen3-vl"], "--device", "cpu", "-o", tmp_path / "out.png",
                 "--json", tmp_path / "a.json")
    assert result.code == 0, result.err
    [answer] = json.loads((tmp_path / "a.json").read_text())["results"]
    assert answer["outcome"] in ("select", "no_mask", "vlm_error") and answer["vlm"]["vlm_calls"] >= 1
    assert answer["transcript"][0]["conversation"] == "agent" and "reply" in answer["transcript"][0]
    assert load_mask(tmp_path / "out.png").shape == (48, 64)


@pytest.mark.parametrize(("extra", "message"), [
    (["--vlm-backend", "openai"], "needs the endpoint: --vlm-url"),
    (["--vlm-backend", "openai", "--vlm-url", "ftp://x/v1"], "is not an http(s) URL"),
    (["--vlm-backend", "openai", "--vlm-url", "http://user:pw@127.0.0.1:1/v1"], "must not hold credentials"),
    (["--vlm-url", "http://127.0.0.1:1/v1"], "applies to --vlm-backend openai"),
    (["--vlm-backend", "nope"], "unknown --vlm-backend 'nope'"),
    (["--vlm-max-pixels", "10"], "--vlm-max-pixels must be between"),
    (["--vlm-model", "Some/Model-Nowhere"], "--vlm-model DIR"),
    (["--preset", "sam3-agent", "--proposals", "freesolo"], "takes no --proposals freesolo"),
    (["--vlm-shortlist", "global-local"], "add --preset marks"),
    (["--vlm-precision", "fp8"], "unknown --vlm-precision 'fp8'"),
    (["--vlm-backend", "openai", "--vlm-url", "http://127.0.0.1:1/v1", "--vlm-precision", "bf16"],
     "--vlm-precision applies to the model in this process"),
])
def test_bad_vlm_options_are_one_line_before_any_model_loads(run, photo_file, tmp_path, extra, message):
    code, err = run("segment", photo_file, "the man", "--method", "vlm", *extra, "-o", tmp_path / "out.png")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out.png").exists()


def test_vlm_options_beside_another_method_are_refused(run, photo_file, tmp_path):
    code, err = run("segment", photo_file, "the man", "--vlm-model", "x", "-o", tmp_path / "out.png")
    assert code == 2 and "--vlm-model applies to --method vlm" in err


def test_batch_sets_aside_a_line_the_endpoint_did_not_answer_and_a_rerun_asks_again(cli, photo_file, masks_dir,
                                                                                     tmp_path):
    box = '[{"bbox_2d": [469, 104, 781, 833], "label": "man"}]'
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": str(photo_file), "phrase": "the man"}) + "\n")
    out = tmp_path / "out"
    with ChatServer([box], faults=[503] * 3) as server:  # the first request and its two retries fail
        args = ["batch", manifest, "-o", out, "--method", "vlm", "--preset", "box", *endpoint(server),
                "--masks", masks_dir]
        first = cli(*args)
        assert first.code == 1 and "1 line failed" in first.err, first.err
        [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
        assert server.url in error["error"] and "503" in error["error"]
        second = cli(*args)
        assert second.code == 0, second.err
        assert len(server.requests) == 4  # three failed attempts, then one answer
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (record["index"], record["outcome"], record["answer_set"]) == (1, "select", [1])
    assert np.array_equal(load_mask(out / record["mask"]), load_mask(masks_dir / "001.png"))


def test_evaluate_records_each_outcome_and_a_resume_asks_again_only_what_the_endpoint_did_not_answer(
        cli, sam3_folder, tmp_path):
    """gRefCOCO (several targets, or none) with the agent: the first run records a transport failure for one
    query, the rerun asks the endpoint that query alone (the others' replies come from --cache) and replaces
    that image's records."""
    from grefcoco_fixtures import build_grefcoco
    from vlm_script import tool

    from globallocal.runs.evaluation_records import read_records

    fixture = build_grefcoco(tmp_path / "dataset")
    down = {"the red car": True}

    def reply(body: dict) -> dict | str:
        text = json.dumps(body["messages"])
        query = next((q for q in ("the red car", "a giraffe", "the dog under the table") if f"'{q}'" in text), "")
        if down.get(query):
            return {"status": 503}
        turn = sum(message["role"] == "assistant" for message in body["messages"])
        if query in ("a giraffe", "the dog under the table"):
            return tool("report_no_mask")
        return [tool("segment_phrase", text_prompt="thing"), tool("select_masks_and_return",
                                                                  final_answer_masks=[1])][min(turn, 1)]

    with ChatServer(reply) as server:
        args = ["evaluate", "--dataset", "grefcoco", "--split", "val", "--data-root", fixture.data_root, "--images",
                fixture.images_dir, "--method", "vlm", "--sam3-weights", sam3_folder, "--sam3-threshold", "0",
                *endpoint(server), "--cache", tmp_path / "cache", "--device", "cpu", "--out", tmp_path / "run"]
        first = cli(*args)
        assert first.code == 0, first.err
        records = {r["phrase"]: r for image in read_records(tmp_path / "run") for r in image.records}
        assert (records["the red car"]["outcome"], records["the red car"]["outcome_reason"]) == (
            "vlm_error", "transport") and records["the red car"]["retry"] is True
        assert records["a giraffe"]["outcome"] == "no_mask" and records["a giraffe"]["pred_area"] == 0
        asked = len(server.requests)
        down["the red car"] = False
        second = cli(*args)
        assert second.code == 0, second.err
        again = [json.dumps(r["body"]["messages"]) for r in server.requests[asked:]]
    assert again and all("'the red car'" in text for text in again)  # nothing else was asked again
    images = read_records(tmp_path / "run")
    assert len(images) == 2 and not any(image.marker.get("retry") for image in images)
    records = {r["phrase"]: r for image in images for r in image.records}
    assert len(records) == 7 and "retry" not in records["the red car"]
    assert records["the red car"]["outcome"] == "select"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["answers"] == "none, one or several" and report["metrics"]["N-acc"] is not None
    # The outcome of every sentence, counted: two no-target queries reported none, five selected.
    assert report["answer_outcomes"] == {"outcomes": {"no_mask": 2, "select": 5}, "reasons": {}}
    shown = cli("report", tmp_path / "run")
    assert shown.code == 0 and "no_mask 2, select 5" in " ".join(shown.out.split()), shown.out
    assert "how the sentences were answered: no_mask 2, select 5" in (tmp_path / "run" / "report.md").read_text()


def test_serve_answers_with_the_vlm_and_shows_an_endpoint_that_does_not_answer(cli, photo_file, masks_dir,
                                                                               monkeypatch):
    import socket

    import globallocal.serve
    from globallocal.errors import VlmEndpointError

    served = []
    monkeypatch.setattr(globallocal.serve, "serve", lambda engine, *args, **kwargs: served.append(engine))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    box = '[{"bbox_2d": [469, 104, 781, 833], "label": "man"}]'
    with ChatServer([box]) as server:
        result = cli("serve", "--method", "vlm", "--preset", "box", *endpoint(server), "--port", port)
        assert result.code == 0, result.err
        engine = served[0]
        masks = sorted(str(path) for path in masks_dir.iterdir())
        session = engine.set_image(photo_file, "masks", masks)
        answer = engine.answer(session, ["the man"], {})
        assert answer.results[0].index == 1 and answer.results[0].vlm.outcome == "select"
        server.faults.extend([503] * 3)
        with pytest.raises(VlmEndpointError, match="503"):
            engine.answer(session, ["the man"], {})


def test_a_ray_driver_describes_the_actors_vlm_at_their_device_and_never_loads_it(vlm_folders):
    """The driver of `--ray --device cuda` runs on a CPU: it records the VLM as the actors on GPUs load it (bf16
    by default), so that their check against the run's settings passes, and loads no VLM itself."""
    from globallocal.commands.recipe import ModelRecipe
    from globallocal.methods.vlm.options import VlmOptions

    options = VlmOptions(model=str(vlm_folders["qwen3-vl"])).method_options("vlm")
    recipe = ModelRecipe("vlm", None, "openai", "box", "cuda", "fp32", None, method_options=options)
    worker = recipe.build_description()
    backend = worker.segmenter.method.backend
    assert (worker.settings["model"]["device"], worker.settings["model"]["dtype"]) == ("cuda", "bfloat16")
    assert worker.settings["device"] == "cuda" and not backend.loaded
    here = ModelRecipe("vlm", None, "openai", "box", "cpu", "fp32", None, method_options=options)
    assert here.build_description().settings == here.build().settings  # described as it loads
