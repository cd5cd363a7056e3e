"""`batch --ray` and `evaluate --ray`: the same bytes as one process, faults, resuming; tiny random CLIP.

One local Ray instance (2 CPUs) serves the whole module: its start-up is paid once. Runs use 2 actors of
one CPU, and Ray gives each one thread; the single-process runs compared with them use one thread too,
since the number of threads changes float sums in their last bits (and so the scores written).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image
from refer_fixtures import build_refer

from globallocal.errors import InputError, WeightsError
from globallocal.runs.batch import ERRORS_FILE, PHOTO_UNITS, RESULTS_FILE
from globallocal.runs.evaluate import RECORDS_FILE, REPORT_JSON, REPORT_MD
from globallocal.runs.runfolder import RunFolder, read_completed

REPO = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cluster():
    """The module's Ray instance; its GCS address, for a driver in another process."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault hooks below travel by value
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """12 lines over 6 small photos with their own masks; line 7 names a photo that does not exist (a 7th unit)."""
    folder = tmp_path_factory.mktemp("pairs")
    lines = []
    for number in range(6):
        photo = Image.open(EXAMPLES / ("img_44266.jpg" if number % 2 else "img_80472.jpg")).convert("RGB")
        photo = photo.resize((96 + 8 * number, 72 + 4 * number)).rotate(90 * number, expand=True)
        photo.save(folder / f"photo{number}.png")
        height, width = photo.height, photo.width
        (folder / f"masks{number}").mkdir()
        for i, (y, x) in enumerate(((0, 0), (height // 2, 0), (0, width // 2))):
            mask = np.zeros((height, width), np.uint8)
            mask[y: y + height // 2, x: x + width // 2] = 255
            Image.fromarray(mask).save(folder / f"masks{number}" / f"mask_{i}.png")
        for phrase in ("the chair on the left", "a dog"):
            lines.append({"image": f"photo{number}.png", "phrase": phrase, "masks": f"masks{number}"})
    lines[6] = {"image": "missing.png", "phrase": "a cat", "masks": "masks0"}
    (folder / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module")
def tiny(tiny_config_paths, tiny_checkpoints):
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, by path (the run folder's own bookkeeping left out)."""
    skip = {"records.jsonl", "run.lock", "config.json"}
    files = sorted(path for path in out.rglob("*") if path.is_file() and path.name not in skip)
    return {str(path.relative_to(out)): path.read_bytes() for path in files}


@pytest.fixture(scope="module")
def reference(pairs, tiny, tmp_path_factory):
    """The single-process batch of the manifest (with overlays and RLE), run by another process."""
    out = tmp_path_factory.mktemp("single") / "out"
    done = subprocess.run(
        [sys.executable, "-m", "globallocal", "batch", pairs, "-o", out, "--overlays", "--rle", *tiny],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 1 and "1 line failed" in done.stderr, done.stderr
    return out


def _batch(pairs, out, tiny, *extra):
    return ["batch", pairs, "-o", out, "--overlays", "--rle", *tiny, *extra]


def _untimed(value):
    """``value`` without its timings (keys ending in "seconds"), which differ between any two runs."""
    if isinstance(value, dict):
        return {key: _untimed(item) for key, item in value.items() if not key.endswith("seconds")}
    return [_untimed(item) for item in value] if isinstance(value, list) else value


def _close(first, second) -> bool:
    """Equal, floats to a relative 1e-5."""
    if isinstance(first, float) and isinstance(second, float):
        return math.isclose(first, second, rel_tol=1e-5)
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_close(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        return len(first) == len(second) and all(map(_close, first, second))
    return first == second


def _markers(out: Path) -> list[int]:
    return [unit.marker["unit_done"] for unit in read_completed(out, PHOTO_UNITS)]


def test_batch_on_ray_writes_the_same_bytes_and_resumes_a_single_process_run(
    cluster, cli, pairs, tiny, reference, tmp_path
):
    out = tmp_path / "ray"
    result = cli(*_batch(pairs, out, tiny, "--ray", "local", "--ray-actors", "2"))
    assert result.code == 1, result.err
    assert "ray cluster: 1 node, 2 CPUs, 0 GPUs" in result.err and "2 actors of 1 CPU, 0 GPU" in result.err
    assert "11 masks from 12 lines (7 photos)" in result.err and "retried" not in result.err, result.err
    expected = _outputs(reference)
    assert _outputs(out) == expected and len([name for name in expected if name.startswith("masks/")]) == 11
    assert (out / "config.json").read_bytes() == (reference / "config.json").read_bytes()
    assert "missing.png" in (out / ERRORS_FILE).read_text()

    # A single-process run killed after two photos, resumed on Ray: the rest done once, the same bytes.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "config.json").write_bytes((reference / "config.json").read_bytes())
    lines = (reference / "records.jsonl").read_bytes().split(b"\n")
    kept = lines[: [i for i, line in enumerate(lines) if b'"unit_done"' in line][1] + 1]
    (resumed / "records.jsonl").write_bytes(b"\n".join(kept) + b'\n{"torn')
    for record in map(json.loads, kept):
        for name in (record.get("mask"), record.get("overlay")):
            if name:
                (resumed / name).parent.mkdir(exist_ok=True)
                (resumed / name).write_bytes(expected[name])
    assert cli(*_batch(pairs, resumed, tiny, "--ray", "local", "--ray-actors", "2")).code == 1
    assert _outputs(resumed) == expected and sorted(_markers(resumed)) == list(range(7))


class PausingRecipe:
    """A recipe whose first unit anywhere stops for a minute after writing its actor's pid (to be killed)."""

    def __init__(self, recipe, flag: Path) -> None:
        self.recipe, self.flag = recipe, flag

    def build(self, device=None, precision=None):
        worker = self.recipe.build(device, precision)
        set_image, flag = worker.segmenter.set_image, self.flag

        def pause_once(*args, **kwargs):
            try:
                handle = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return set_image(*args, **kwargs)
            os.write(handle, str(os.getpid()).encode())
            os.close(handle)
            time.sleep(60)

        worker.segmenter.set_image = pause_once
        return worker


def _kill_when_flagged(flag: Path) -> threading.Thread:
    def kill() -> None:
        while not flag.exists() or not flag.read_text():
            time.sleep(0.05)
        os.kill(int(flag.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_killed_actor_is_restarted_and_its_photo_retried(cluster, pairs, tiny_config_paths, tiny_checkpoints,
                                                           reference, tmp_path):
    from globallocal.commands.recipe import ModelRecipe
    from globallocal.runs.batch import run_batch
    from globallocal.runs.ray_engine import RayOptions, RayRun

    recipe = ModelRecipe("global-local", str(tiny_config_paths["vit"]), str(tiny_checkpoints["vit"]), None, "cpu",
                         "fp32", None)
    worker = recipe.build()
    flag = tmp_path / "victim.pid"
    killer = _kill_when_flagged(flag)
    with RayRun(RayOptions("local", actors=2), say=lambda line: None) as run:
        summary = run_batch(
            pairs, tmp_path / "out", worker.segmenter, settings=worker.settings, weights=worker.weights,
            rle=True, overlays=True, allow_no_noun=True, progress=False, ray=run,
            recipe=PausingRecipe(recipe, flag),
        )
    killer.join(timeout=1)
    assert summary["retried_units"] == 1 and summary["results"] == 11 and run.restarts == 1
    assert _outputs(tmp_path / "out") == _outputs(reference)


def test_a_killed_driver_resumes_exactly(cluster, cli, pairs, tiny, reference, tmp_path):
    out = tmp_path / "out"
    args = [str(arg) for arg in _batch(pairs, out, tiny, "--ray", cluster, "--ray-actors", "2")]
    driver = subprocess.Popen([sys.executable, "-m", "globallocal", *args], cwd=REPO, stderr=subprocess.PIPE,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    while not (out / RECORDS_FILE).exists() or b'"unit_done"' not in (out / RECORDS_FILE).read_bytes():
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    said = driver.stderr.read().decode()
    # Ray's core worker's note on the actors' arguments is not shown (they had started: a unit was done).
    assert "ray cluster:" in said and "max_restarts" not in said, said
    before = _markers(out)
    assert 1 <= len(before) < 7 and not (out / RESULTS_FILE).exists()
    result = cli(*args)
    assert result.code == 1, result.err
    assert _outputs(out) == _outputs(reference)
    markers = _markers(out)
    assert markers[: len(before)] == before and sorted(markers) == list(range(7))  # none doubled


def test_evaluate_on_ray_gives_the_single_process_report_and_records(cluster, cli, tiny, tmp_path):
    refer = build_refer(tmp_path / "dataset")

    def evaluate(out, *extra):
        result = cli("evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
                     "--images", refer.images_dir, "--proposals", "gt", "--out", out, "--save-masks",
                     out.with_name(out.name + "_masks"), *tiny, *extra)
        assert result.code == 0, result.err
        records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
        report = json.loads((out / REPORT_JSON).read_text())
        # Timings and the moment differ between any two runs; everything else must not.
        for name in ("wall_time_s", "images_per_second", "finished_at", "out_dir"):
            report.pop(name)
        report["config"].pop("save_masks")  # the two runs write their masks to two folders
        by_image = {r["image_done"]: r for r in records if "image_done" in r}
        sentences = sorted((r for r in records if "image_done" not in r), key=lambda r: (r["image_id"], r["sent_id"]))
        markdown = [line for line in (out / REPORT_MD).read_text().splitlines()
                    if "wall time" not in line and "save_masks" not in line]
        return report, sentences, sorted(by_image), markdown, _outputs(out.with_name(out.name + "_masks"))

    single = evaluate(tmp_path / "single")
    on_ray = evaluate(tmp_path / "ray", "--ray", "local", "--ray-actors", "2")
    assert on_ray == single and len(single[4]) == single[0]["metrics"]["sentences"] > 0


def test_ray_without_the_extra_says_how_to_install_it(cli, pairs, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is not installed
    result = cli(*_batch(pairs, tmp_path / "out", tiny, "--ray", "local"))
    assert result.code == 2
    assert result.err.strip() == "error: --ray needs Ray, which is not installed: pip install 'globallocal[ray]'"


def test_a_folder_in_use_is_refused_at_once(cli, pairs, tiny, tmp_path):
    out = tmp_path / "out"
    with RunFolder(out, PHOTO_UNITS):
        started = time.monotonic()
        result = cli(*_batch(pairs, out, tiny, "--ray", "local"))
    assert result.code == 2 and "is in use by another run" in result.err
    assert time.monotonic() - started < 10 and "ray cluster" not in result.err


def test_ray_options_need_ray_and_sensible_numbers(cli, pairs, tiny, tmp_path):
    result = cli(*_batch(pairs, tmp_path / "a", tiny, "--ray-actors", "2"))
    assert result.code == 2 and "--ray-actors needs --ray" in result.err
    result = cli(*_batch(pairs, tmp_path / "b", tiny, "--ray", "local", "--ray-actors", "0"))
    assert result.code == 2 and "--ray-actors must be at least 1, got 0" in result.err


def test_without_ray_ray_is_never_imported(pairs, tiny, tmp_path):
    script = (
        "import sys\nfrom globallocal import cli\n"
        f"sys.argv = ['globallocal', *{[str(arg) for arg in _batch(pairs, tmp_path / 'out', tiny)]!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print('ray imported:', any(name == 'ray' or name.startswith('ray.') for name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "ray imported: False" in done.stdout, done.stderr
    assert (tmp_path / "out" / RESULTS_FILE).is_file()


def test_native_lines_of_ray_noise_are_dropped_and_the_others_kept(capfd):
    import re

    from globallocal.runs.ray_engine import _CORE_WORKER_NOISE, dropping_native_lines

    line = (b"[2026-12-07 17:34:53,232 E 9667 9667] core_worker.cc:2465: Actor with class name: "
            b"'MapWorker(MapBatches(_UnitActor))' and ID: 'c142c9cb6273ac44' has constructor arguments in the object "
            b"store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor "
            b"restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.")
    assert _CORE_WORKER_NOISE.search(line)
    with dropping_native_lines(re.compile(rb"NOISE")):
        os.write(2, b"kept 1\n[E] core NOISE here\nkept 2\n")
        os.write(2, b"no newline yet")
    assert capfd.readouterr().err == "kept 1\nkept 2\nno newline yet"


def test_rays_token_notice_is_not_shown_when_a_run_starts_its_cluster(monkeypatch):
    import logging

    from ray._private.authentication import authentication_token_setup

    from globallocal.runs.ray_engine import RayOptions, RayRun

    said = []
    listener = logging.Handler()
    listener.emit = lambda record: said.append(record.getMessage())
    notices = logging.getLogger(authentication_token_setup.__name__)
    notices.addHandler(listener)
    monkeypatch.setattr(notices, "level", notices.level)  # put back after the test

    class Started(Exception):
        pass

    def init(**options):
        authentication_token_setup._warn_token_auth_enabled()  # what ray.init says as it starts a local cluster
        raise Started

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    try:
        with pytest.raises(Started):
            RayRun(RayOptions("local")).__enter__()
    finally:
        notices.removeHandler(listener)
    assert said == []


def test_the_pool_defaults_to_one_actor_per_gpu_else_one_per_two_cpus():
    from globallocal.runs.ray_engine import Pool, RayOptions

    assert Pool.size(RayOptions(), {"CPU": 64.0, "GPU": 8.0}) == Pool(8, 1.0, 1.0)
    assert Pool.size(RayOptions(gpus_per_actor=0.5), {"CPU": 64.0, "GPU": 8.0}) == Pool(16, 1.0, 0.5)
    assert Pool.size(RayOptions(), {"CPU": 16.0}) == Pool(8, 2.0, 0.0)
    assert Pool.size(RayOptions(actors=2), {"CPU": 2.0}) == Pool(2, 1.0, 0.0)
    assert Pool(8, 1.0, 1.0).device == "cuda" and Pool(2, 1.0, 0.0).device == "cpu"


def test_a_node_with_other_weights_is_named_with_both_hashes(tmp_path):
    from globallocal.models.weights import weights_identity
    from globallocal.runs.ray_engine import check_node
    from globallocal.runs.worker import Worker

    (tmp_path / "run.pt").write_bytes(b"the run's weights")
    (tmp_path / "node.pt").write_bytes(b"other weights")
    expected = {"settings": {"preset": "paper"}, "weights": {"clip": weights_identity(tmp_path / "run.pt")}}
    with pytest.raises(WeightsError) as caught:
        check_node(expected, Worker(None, None, {"preset": "paper"}, {"clip": tmp_path / "node.pt"}), "gpu7 (10.0.0.7)")
    run_sha, node_sha = (weights_identity(tmp_path / name)["sha256"] for name in ("run.pt", "node.pt"))
    assert str(caught.value) == (
        f"node gpu7 (10.0.0.7): clip weights {tmp_path / 'node.pt'} have sha256 {node_sha}, the run's have "
        f"sha256 {run_sha}; give every node the same weights file"
    )
    with pytest.raises(InputError, match=r"node n1: settings differ from the run's \(preset\)"):
        check_node(expected, Worker(None, None, {"preset": "no-quirks"}, {"clip": tmp_path / "run.pt"}), "n1")
    check_node(expected, Worker(None, None, {"preset": "paper"}, {"clip": tmp_path / "run.pt"}), "n1")


def test_a_unit_whose_worker_keeps_dying_is_given_up_not_retried_for_ever(pairs):
    from globallocal.data.manifest import read_manifest
    from globallocal.runs.batch import group_units
    from globallocal.runs.batch_step import BatchOptions, BatchStep
    from globallocal.runs.ray_engine import MAX_ATTEMPTS, _UnitActor

    unit = group_units(read_manifest(pairs))[0]
    actor = object.__new__(_UnitActor)  # its Ray side (the attempts counter) is not what is tested here
    actor.step, actor.fatal = BatchStep(None, None, BatchOptions()), None
    given_up = actor._one(unit, MAX_ATTEMPTS + 1)
    assert [record["id"] for record in given_up.records] == ["1", "2"]
    assert all(record["error"] == f"its worker died {MAX_ATTEMPTS} times (killed, out of memory or crashed); "
               "given up" for record in given_up.records)


def test_a_head_that_does_not_answer_is_one_line_within_a_bounded_wait(monkeypatch):
    import socket

    from globallocal.runs.ray_engine import RayOptions, RayRun, head_unanswered

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a driver about to join a head
    started = time.monotonic()
    with pytest.raises(InputError) as caught:  # Ray itself waits there for minutes
        RayRun(RayOptions("127.0.0.1:1")).__enter__()
    assert time.monotonic() - started < 5
    assert str(caught.value).startswith("cannot join the Ray cluster at 127.0.0.1:1: nothing answers there (")
    with socket.socket() as silent, socket.socket() as web:
        for server in (silent, web):
            server.bind(("127.0.0.1", 0))
            server.listen()

        def answer_http() -> None:
            connection, _ = web.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        assert head_unanswered("127.0.0.1", silent.getsockname()[1], wait=0.3) == "no answer within 0.3 s"
        assert head_unanswered("127.0.0.1", web.getsockname()[1]) == "what answers there is not a Ray head"


def test_a_ray_head_answers(cluster):
    from globallocal.runs.ray_engine import RayOptions, head_unanswered

    host, port = RayOptions(cluster).head()
    assert head_unanswered(host, port) is None
    assert RayOptions("ray://[::1]:10001").head() == ("::1", 10001)
    assert RayOptions("local").head() is None  # Ray starts here: nothing to join


def test_evaluate_with_the_vlm_on_ray_gives_the_single_process_records(cluster, cli, vlm_folders, tmp_path):
    """The actors load the VLM and the driver only describes it (tests/test_vlm_cli.py: at the actors' device):
    the actors' settings pass the check against the run's, and their records equal one process's."""
    refer = build_refer(tmp_path / "dataset")

    def evaluate(out, *extra):
        result = cli("evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
                     "--images", refer.images_dir, "--proposals", "gt", "--out", out, "--limit", "1",
                     "--method", "vlm", "--preset", "marks", "--vlm-model", vlm_folders["qwen3-vl"],
                     "--device", "cpu", *extra)
        assert result.code == 0, result.err
        records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
        config = json.loads((out / "config.json").read_text())
        sentences = sorted((r for r in records if "image_done" not in r), key=lambda r: (r["image_id"], r["sent_id"]))
        return config["settings"], _untimed(sentences)

    single = evaluate(tmp_path / "single")
    on_ray = evaluate(tmp_path / "ray", "--ray", "local", "--ray-actors", "1")
    # The label log-probabilities may differ in their last bits: the actor's torch started on one thread, this
    # process's was set to one after starting on two, and the CPU's matrix kernels may then sum in other orders.
    assert _close(on_ray, single) and len(single[1]) > 0
    assert (single[0]["model"]["device"], single[0]["model"]["dtype"]) == ("cpu", "float32")
