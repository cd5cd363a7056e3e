"""Every refusal of a bad option, name or path, and `report`, answer before torch, open_clip or spaCy load.

The commands run in a fresh interpreter, one after the other; after each the
heavy libraries must still be absent from ``sys.modules``, which is what makes
the answers take a fraction of a second (importing torch alone takes seconds).
The time bounds are generous, for a loaded machine; the module check is exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "img_44266.jpg"
HEAVY = ("torch", "open_clip", "spacy", "torchvision")

RUNNER = r"""
import contextlib, io, json, sys, time
sys.argv = ["globallocal"]
from globallocal import cli  # the command line's own imports (typer, rich) are part of every answer
answers = []
for args in json.load(sys.stdin):
    sys.argv = ["globallocal", *args]
    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            cli.main()
            code = 0
        except SystemExit as done:
            code = done.code or 0
    answers.append({"args": args, "code": code, "err": err.getvalue(), "out": out.getvalue(),
                    "seconds": time.perf_counter() - started,
                    "heavy": [name for name in HEAVY if name in sys.modules]})
json.dump(answers, sys.stdout)
""".replace("HEAVY", repr(HEAVY))


def run_fresh(cases: list[list[str]], cwd: Path, **env: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cases), capture_output=True, text=True,
                          cwd=cwd, timeout=120,
                          env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "", **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def run_folder(tmp_path):
    """A finished evaluation run, as `report` reads it."""
    folder = tmp_path / "runs" / "refcoco_val"
    folder.mkdir(parents=True)
    precision = {threshold: 10.0 for threshold in ("0.5", "0.6", "0.7", "0.8", "0.9")}
    (folder / "report.json").write_text(json.dumps({
        "config": {"dataset": "refcoco", "split": "val", "split_by": "unc", "overlap": "paper",
                   "settings": {"clip_model": "ViT-B-32", "preset": "paper", "alpha": 0.95, "beta": 0.5}},
        "metrics": {"oIoU": 24.8, "mIoU": 26.2, "precision": precision, "images": 3, "sentences": 9,
                    "no_proposal_sentences": 0},
        "images_total": 3, "truncated_sentences": 0, "wall_time_s": 60.0,
    }))
    return folder


def test_refusals_and_report_answer_without_the_heavy_libraries(tmp_path, run_folder):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / "ViT-B-32.pt").write_bytes(b"not read")
    image = str(PHOTO)
    cases = {
        "unknown method 'bogus'": ["segment", image, "the chair", "--method", "bogus"],
        "unknown preset 'nope'": ["segment", image, "the chair", "--preset", "nope"],
        "unknown CLIP model 'ViT-Q-99'": ["segment", image, "the chair", "--clip-model", "ViT-Q-99"],
        "unknown --proposals 'sam4'": ["segment", image, "the chair", "--proposals", "sam4"],
        "alpha must be in [0, 1], got 1.5": ["segment", image, "the chair", "--alpha", "1.5"],
        "chunk size must be >= 1, got 0": ["segment", image, "the chair", "--chunk-size", "0"],
        "unknown --device 'gpu'": ["segment", image, "the chair", "--device", "gpu"],
        "unknown precision 'fp64'": ["segment", image, "the chair", "--precision", "fp64"],
        "--method hybridgl needs a ViT CLIP": ["segment", image, "the chair", "--method", "hybridgl",
                                               "--clip-model", "RN50-quickgelu"],
        "--method tcl needs a ViT CLIP": ["segment", image, "the chair", "--method", "tcl", "--clip-model", "RN50"],
        f"--clip-weights {weights_dir} is a folder; give the checkpoint file itself; it holds ViT-B-32.pt":
            ["segment", image, "the chair", "--clip-weights", str(weights_dir)],
        f"{REPO / 'examples'} is a folder; give one photo": ["segment", str(REPO / "examples"), "the chair"],
        f"--json {tmp_path} is a folder; give a file name such as {tmp_path / 'scores.json'}":
            ["segment", image, "the chair", "--json", str(tmp_path)],
        "unknown --proposals 'sam4'; use freesolo, sam2, sam, sam3, gt": [
            "evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", str(tmp_path),
            "--proposals", "sam4"],
        "--alpha does not apply to --method tcl": ["batch", str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "b"),
                                                    "--method", "tcl", "--alpha", "0.5"],
        # --method sam3: its own options checked, proposals and CLIP refused, all before torch.
        "--proposals sam2 does not apply to --method sam3: SAM 3 finds its own instances": [
            "segment", image, "the chair", "--method", "sam3", "--proposals", "sam2"],
        "--clip-model does not apply to --method sam3": ["segment", image, "the chair", "--method", "sam3",
                                                         "--clip-model", "ViT-B-32"],
        "--sam3-answer applies to --method sam3": ["segment", image, "the chair", "--sam3-answer", "union"],
        "SAM 3 answer must be one of top, union, got 'all'": ["segment", image, "the chair", "--method", "sam3",
                                                              "--sam3-answer", "all"],
        "SAM 3 prompt must be one of": ["batch", str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "b"),
                                        "--method", "sam3", "--sam3-prompt", "words"],
        "SAM 3 threshold must be in [0, 1]": ["segment", image, "the chair", "--method", "sam3",
                                              "--sam3-threshold", "2"],
        "max_proposals must be at least 1, got 0": ["segment", image, "the chair", "--method", "sam3",
                                                    "--max-proposals", "0"],
        "--cache keeps CLIP features; --method sam3 computes none": [
            "evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", str(tmp_path), "--method", "sam3",
            "--cache", str(tmp_path / "cache")],
    }
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": image, "phrase": "the chair"}) + "\n")
    answers = run_fresh([*cases.values(), ["report", str(run_folder)]], tmp_path)
    for (expected, _), answer in zip(cases.items(), answers):
        lines = [line for line in answer["err"].splitlines() if line.strip()]
        assert answer["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), answer
        assert expected in lines[0], answer
        assert answer["heavy"] == [], answer
        assert answer["seconds"] < 3, answer
    report = answers[-1]
    assert report["code"] == 0 and "24.80" in report["out"] and report["heavy"] == [], report


def _one_line_errors(answers: list[dict], expected: list[str]) -> None:
    """Each answer is the one error line expected, with exit 2, and no heavy library was imported for it."""
    for part, answer in zip(expected, answers, strict=True):
        lines = [line for line in answer["err"].splitlines() if line.strip()]
        assert answer["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), answer
        assert part in lines[0], (part, answer)
        assert answer["heavy"] == [], answer


def _fake_sam3_folder(folder: Path, **sizes) -> Path:
    """A folder in SAM 3's layout whose files the torch-free check reads (the weights file is never opened)."""
    folder.mkdir()
    backbone = {"image_size": 1008, "patch_size": 14, **sizes}
    (folder / "config.json").write_text(json.dumps({"model_type": "sam3",
                                                    "vision_config": {"backbone_config": backbone}}))
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": {"size": {"height": 1008,
                                                                                           "width": 1008}}}))
    for name in ("model.safetensors", "tokenizer.json"):
        (folder / name).write_bytes(b"{}")
    return folder


def test_the_slow_refusals_of_issue_27_answer_before_torch(tmp_path):
    """Each of these took 5-10 s (torch, or a model, loaded first)."""
    image = str(PHOTO)
    sam3 = str(_fake_sam3_folder(tmp_path / "sam3"))
    huge = str(_fake_sam3_folder(tmp_path / "huge", image_size=1_000_000))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": image, "phrase": "the chair"}) + "\n")
    batch = ["batch", str(pairs), "-o", str(tmp_path / "b")]
    cases = {
        "--clip-model does not apply to --method sam3": ["segment", image, "the chair", "--method", "sam3",
                                                         "--sam3-weights", sam3, "--clip-model", "ViT-B-32"],
        "--top-k-picture shows ranked proposals; --method sam3 takes none": [
            "segment", image, "the chair", "--method", "sam3", "--sam3-weights", sam3, "--top-k-picture", "t.png"],
        "--sam-model vit_b is an original SAM model, which --proposals sam2 does not take: use --proposals sam "
        "--sam-model vit_b": ["segment", image, "the chair", "--proposals", "sam2", "--sam-model", "vit_b"],
        "unknown SAM model 'tiny'; use vit_h, vit_l, vit_b; SAM 2's tiny is --proposals sam2 --sam-model tiny": [
            "segment", image, "the chair", "--proposals", "sam", "--sam-model", "tiny"],
        f"no evaluation run in {tmp_path / 'nope'}: no such folder": ["sweep", str(tmp_path / "nope")],
        "max_proposals must be at least 1, got 0": ["segment", image, "the chair", "--max-proposals", "0"],
        "backbone_config.image_size must be a whole number from 1 to 4096, got 1000000": [
            "segment", image, "the chair", "--proposals", "sam3", "--sam3-weights", huge],
        f"SAM 3 weights folder {tmp_path / 'nowhere'} does not exist": [
            "segment", image, "the chair", "--method", "sam3", "--sam3-weights", str(tmp_path / "nowhere")],
        # --ray: the address's form and the pool's numbers, before anything loads.
        "--ray 'garbage' is not a Ray address; use local (start Ray on this machine), auto": [*batch, "--ray",
                                                                                             "garbage"],
        "--ray '' is not a Ray address": [*batch, "--ray", ""],
        "--ray 'ray://' is not a Ray address": [*batch, "--ray", "ray://"],
        "--ray '10.0.0.5:http' is not a Ray address": [*batch, "--ray", "10.0.0.5:http"],
        "--ray '10.0.0.5:70000' is not a Ray address": [*batch, "--ray", "10.0.0.5:70000"],
        "--ray-cpus-per-actor must be a number from 0 to 1024, got nan": [*batch, "--ray", "local",
                                                                         "--ray-cpus-per-actor", "nan"],
        "--ray-actors must be at most 1024, got 1000000": [*batch, "--ray", "local", "--ray-actors", "1000000"],
    }
    _one_line_errors(run_fresh(list(cases.values()), tmp_path), list(cases))
    garbage = run_fresh([[*batch, "--ray", "auto"]], tmp_path, RAY_ADDRESS="garbage")
    _one_line_errors(garbage, ["RAY_ADDRESS='garbage' (read under --ray auto) is not a Ray address"])
    # The photo over the pixel limit (lowered here), refused from its header before torch.
    bounded = run_fresh([["segment", image, "the chair"]], tmp_path, GLOBALLOCAL_MAX_PIXELS="1000")
    _one_line_errors(bounded, [f"image {image} has more than 1000 pixels; memory grows with the pixels"])


def test_fp16_on_a_cpu_without_its_units_is_refused_before_torch(tmp_path):
    from globallocal.models.devices import cpu_fp16_units

    if cpu_fp16_units() is not False:
        pytest.skip("this CPU has float16 matrix units (AMX-FP16), or its flags cannot be read")
    answers = run_fresh([["segment", str(PHOTO), "the chair", "--precision", "fp16", "--device", "cpu"]], tmp_path)
    _one_line_errors(answers, ["precision fp16 has no fast kernels on this CPU (no AMX-FP16)"])


def test_a_held_run_folder_is_refused_before_anything_loads(tmp_path):
    from globallocal.runs.runfolder import RunFolder, UnitLayout

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": str(PHOTO), "phrase": "the chair"}) + "\n")
    with RunFolder(tmp_path / "out", UnitLayout("photo_done", "photo", "lines")):
        (answer,) = run_fresh([["batch", str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "out")]], tmp_path)
    assert answer["code"] == 2 and "in use by another run" in answer["err"], answer
    assert answer["heavy"] == [] and answer["seconds"] < 3, answer
