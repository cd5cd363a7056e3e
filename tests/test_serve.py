"""`globallocal serve`'s callbacks on tiny random models, without a browser."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the [demo] extra (Gradio) is not installed")

from globallocal.errors import InputError, WeightsError  # noqa: E402
from globallocal.methods import build_method  # noqa: E402
from globallocal.proposals import Proposals  # noqa: E402
from globallocal.segmenter import Segmenter  # noqa: E402
from globallocal.serve import Engine, example_photos  # noqa: E402
from globallocal.serve.page import Page  # noqa: E402


def _no_freesolo(kind):
    raise WeightsError("FreeSOLO weights are not here and this machine is offline; pass --freesolo-weights FILE")


@pytest.fixture(scope="module")
def page(tiny_vit, nlp):
    engine = Engine(lambda name: Segmenter(tiny_vit, nlp, method=build_method(name, tiny_vit, nlp)), _no_freesolo,
                    "global-local", max_megapixels=1.0)
    page = Page(engine, example_photos(), proposals="masks", top_k=2)
    yield page
    page.close()


@pytest.fixture
def tower_calls(tiny_vit):
    """How many times the image tower ran (its patch embedding is the first layer of every pass)."""
    calls = []
    handle = tiny_vit.visual.conv1.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


def _mask_files(example):
    return [str(path) for path in sorted(example["mask_dir"].iterdir())]


def _segment(page, example, phrases="the wooden chair", view=None, alpha=0.95, beta=0.5):
    return page.segment(view, str(example["image"]), phrases, "masks", _mask_files(example), "global-local",
                        alpha, beta, 0.0, 0.0)


def test_photo_and_phrase_give_one_proposal_at_the_photo_size(page, example, tower_calls):
    out = _segment(page, example)
    assert out[page.status] == ""
    view = out[page.session]
    (result,) = view.answer.results
    assert result.noun_phrase == "the wooden chair" and "the wooden chair" in out[page.summary]
    assert tuple(result.mask.shape) == example["size"]
    assert result.mask.numpy().tolist() == example["masks"][result.index].tolist()
    assert len(tower_calls) > 0
    # The overlay shows the photo; the gallery ranks the two best of three proposals, best first.
    assert out[page.overlay].shape == (*example["size"], 3)
    gallery = out[page.gallery]
    order = np.argsort(-result.scores.numpy(), kind="stable")[:2]
    assert [caption.split(" · ")[:2] for _, caption in gallery] == [[f"#{i + 1}", f"proposal {k}"]
                                                                    for i, k in enumerate(order)]
    assert " = global " in gallery[0][1] and " + local " in gallery[0][1]
    assert "image features" in out[page.timing] and "not run" not in out[page.timing]
    # Downloads: the mask PNG is the chosen proposal; the JSON is segment --json's.
    mask_png, report_json = (p for p in out[page.downloads])
    assert (np.asarray(Image.open(mask_png)) > 0).tolist() == example["masks"][result.index].tolist()
    report = json.loads(open(report_json).read())
    assert report["results"][0]["index"] == result.index and report["proposals"] == 3
    assert report["settings"]["alpha"] == 0.95 and report["method"] == "global-local"
    assert report["results"][0]["scores"] == [float(s) for s in result.scores]


def test_the_json_download_reports_the_settings_as_used(page, example, monkeypatch):
    """The settings a method resolves on the photo (TCL's threshold, its windows) reach the page's JSON too."""
    from globallocal.methods.global_local.method import GlobalLocal

    def resolved(self, image_size):
        return {**self.describe(), "photo_height": image_size[0]}

    monkeypatch.setattr(GlobalLocal, "settings_used", resolved)
    out = _segment(page, example)
    report = json.loads(open(out[page.downloads][-1]).read())
    assert report["settings"]["photo_height"] == example["size"][0] and "method" not in report["settings"]


def test_score_parts_add_up_to_the_score(page, example):
    view = _segment(page, example, alpha=0.7)[page.session]
    (parts,) = view.answer.parts
    torch.testing.assert_close(parts["global"] + parts["local"], view.answer.results[0].scores, rtol=0, atol=1e-6)


def test_moving_alpha_reranks_without_the_image_tower(page, example, tower_calls, tiny_vit, nlp):
    first = _segment(page, example, alpha=0.95)
    view = first[page.session]
    served = json.loads(open(first[page.downloads][-1]).read())["settings"]
    before = len(tower_calls)
    scores = {}
    for alpha in (0.0, 1.0):
        out = page.rerank(view, "global-local", alpha, 0.5, 0.0, 0.0)
        assert out[page.status] == ""
        scores[alpha] = out[page.session].answer.results[0].scores
        assert "image tower not run" in out[page.timing]
        assert out[page.session].answer.settings.alpha == alpha
        # The JSON download reports the slider's weight, the other settings as `segment --json` does.
        report = json.loads(open(out[page.downloads][-1]).read())
        assert report["settings"] == {**served, "alpha": alpha} and served["alpha"] == 0.95
    assert len(tower_calls) == before
    assert not torch.equal(scores[0.0], scores[1.0])
    # Pressing Segment again with a new phrase reuses the session's features too.
    out = _segment(page, example, "the table", view=view)
    assert len(tower_calls) == before and "image tower not run" in out[page.timing]
    # The same scores as a segmenter built with that alpha and run on the photo from scratch.
    fresh = Segmenter(tiny_vit, nlp, method=build_method("global-local", tiny_vit, nlp, alpha=0.0))
    fresh.set_image(example["image"], Proposals.from_masks(torch.from_numpy(example["masks"])))
    torch.testing.assert_close(scores[0.0], fresh.predict("the wooden chair").scores, rtol=0, atol=1e-6)


def test_bad_upload_gets_a_message(page, tmp_path, tower_calls):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    out = page.preview(str(text))
    assert out[page.status] == ("Error: notes.jpg is not an image this page can read; "
                                "upload a JPEG, PNG, WebP, TIFF, BMP or GIF photo")
    out = page.segment(None, str(text), "the chair", "masks", [], "global-local", 0.95, 0.5, 0.0, 0.0)
    assert list(out) == [page.status] and "not an image" in out[page.status]
    assert tower_calls == []


def test_photo_over_the_megapixel_limit_gets_a_message(page, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1250, 1000)).save(big)  # 1.25 MP, limit 1 MP
    out = page.preview(str(big))
    assert out[page.status] == ("Error: big.png is 1.2 megapixels (1250x1000), over this server's limit of 1; "
                                "downscale it, or restart serve with a higher --max-megapixels")


def test_errors_are_one_sentence_and_the_page_goes_on(page, example):
    out = page.segment(None, str(example["image"]), "the chair", "freesolo", [], "global-local", 0.95, 0.5, 0, 0)
    assert out == {page.status: "Error: FreeSOLO weights are not here and this machine is offline; "
                                "pass --freesolo-weights FILE"}
    out = page.segment(None, str(example["image"]), "the chair", "masks", [], "global-local", 0.95, 0.5, 0, 0)
    assert "no mask files were uploaded" in out[page.status]
    out = page.segment(None, str(example["image"]), "  \n ", "masks", _mask_files(example), "global-local",
                       0.95, 0.5, 0, 0)
    assert "type a phrase" in out[page.status]
    assert _segment(page, example)[page.status] == ""


def test_sliders_follow_the_method(page):
    out = page.choose_method("global-local")
    shown = [out[slider] for slider in page.sliders]
    assert [(u["label"], u["value"], u["visible"]) for u in shown[:2]] == [("alpha", 0.95, True), ("beta", 0.5, True)]
    assert [u["visible"] for u in shown[2:]] == [False, False]


def test_serve_without_gradio_says_how_to_install_it(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    code, err = run("serve")
    assert code == 2
    assert err.strip() == ("error: serve needs Gradio, which is not installed; install it with: "
                           "pip install 'globallocal[demo]' (make install does)")


def test_the_upload_limit_is_every_commands_image_limit(run):
    import inspect

    from globallocal.commands.serve import serve

    assert inspect.signature(serve).parameters["max_megapixels"].default.default == 25.0
    assert inspect.signature(Engine).parameters["max_megapixels"].default == 25.0
    code, err = run("serve", "--max-megapixels", "30")
    assert code == 2 and err.strip() == ("error: --max-megapixels 30 is over every command's limit of 25 megapixels; "
                                         "set GLOBALLOCAL_MAX_PIXELS to raise that one too")


def test_invisible_and_huge_phrases_on_the_page(page, example):
    out = _segment(page, example, phrases="\u200b\u200d")
    assert "the phrase is empty" in out[page.status]
    with pytest.warns(UserWarning, match="was cut to its first 2000"):
        out = _segment(page, example, phrases="the wooden chair " * 120_000)  # over spaCy's 1,000,000 characters
    assert out[page.status] == ""
def test_sliders_before_any_answer_change_nothing_and_raise_nothing(page):
    # Gradio reads {} as missing output values and logs a traceback per slider move.
    for unchanged in (page.rerank(None, "global-local", 0.5, 0.5, 0.0, 0.0), page.show(None, "the dog")):
        assert list(unchanged) == [page.status] and unchanged[page.status] == {"__type__": "update"}


def test_the_page_offers_only_methods_the_served_weights_can_run(capsys, tiny_config_paths, tiny_checkpoints):
    from globallocal.commands.serve import servable_methods

    vit, weights = str(tiny_config_paths["vit"]), str(tiny_checkpoints["vit"])
    assert servable_methods("global-local", vit, weights) == ["global-local", "hybridgl"]
    note = capsys.readouterr().err
    assert "does not offer tcl" in note and "restart with --method tcl --clip-model ViT-B-16-quickgelu" in note
    resnet = str(tiny_config_paths["resnet"])
    assert servable_methods("global-local", resnet, str(tiny_checkpoints["resnet"])) == ["global-local"]
    # A pretrained tag: every method loads its own default CLIP.
    assert servable_methods("tcl", "ViT-B-16-quickgelu", "openai") == ["tcl", "global-local", "hybridgl"]


def test_a_port_in_use_is_refused_before_the_models_load(run, monkeypatch):
    import socket

    from globallocal import segmenter

    def loaded(*args, **kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(segmenter.Segmenter, "from_pretrained", loaded)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run("serve", "--port", port)
    assert code == 2 and err.strip() == (f"error: cannot listen on 127.0.0.1:{port} (Address already in use); "
                                         "pick another --port or --host")


@pytest.mark.parametrize("value", ["nan", "0", "-2"])
def test_the_upload_limit_must_be_a_positive_number(run, value):
    code, err = run("serve", "--max-megapixels", value)
    assert code == 2 and err.strip().startswith(f"error: --max-megapixels must be a positive number (got {value}"), err


def test_the_engine_loads_only_the_methods_its_page_offers():
    """A request naming another method (the page's menu lists only the offered ones) loads nothing."""
    loaded = []
    engine = Engine(loaded.append, _no_freesolo, "global-local", methods=["global-local", "hybridgl"])
    with pytest.raises(InputError, match=r"the page does not offer method 'tcl'; it offers global-local, hybridgl"):
        engine.segmenter("tcl")
    assert loaded == []
    engine.segmenter("hybridgl")
    assert loaded == ["hybridgl"]
