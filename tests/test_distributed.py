"""Evaluation under torchrun: sharding, the environment, and two gloo processes against one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch.distributed as dist
from refer_fixtures import build_refer

from globallocal import cli
from globallocal.errors import InputError
from globallocal.runs.distributed import Distributed, distributed_session, from_environment
from globallocal.runs.evaluate import CONFIG_FILE, RECORDS_FILE, REPORT_JSON
from globallocal.runs.sweep import run_sweep

# Outputs are byte-identical to one process's only with the same arithmetic (docs/scale.md), threads
# included: torchrun gives each process one thread, so the single-process runs here use one too.
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def test_environment_and_sharding(monkeypatch, no_torchrun):
    assert from_environment() == Distributed(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    place = from_environment()
    assert (place.rank, place.world_size, place.local_rank, place.is_main) == (3, 4, 1, False)
    assert place.device("cuda") == "cuda:1" and place.device("cuda:0") == "cuda:1" and place.device("cpu") == "cpu"
    assert Distributed().device("cuda:2") == "cuda:2"  # a single process keeps the device it was given

    items = list(range(11))
    shares = [Distributed(rank, 4).shard(items) for rank in range(4)]
    assert shares[3] == place.shard(items) == [3, 7]
    assert sorted(sum(shares, [])) == items  # disjoint and complete

    for rank, world in (("4", "4"), ("-1", "2"), ("x", "2")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(InputError, match="RANK"):
            from_environment()


def test_a_single_process_creates_no_process_group(no_torchrun):
    with distributed_session("cpu") as place:
        assert place == Distributed() and place.is_main
        place.barrier()
        assert not dist.is_initialized()


def _cli(monkeypatch, capsys, *args) -> str:
    monkeypatch.setattr(sys, "argv", ["globallocal", *map(str, args)])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    capsys.readouterr()
    cli.main()
    return capsys.readouterr().out


def _sentences(out_dir: Path) -> list[dict]:
    records = [
        json.loads(line)
        for path in sorted(out_dir.glob("records*.jsonl"))
        for line in path.read_text().splitlines()
        if line.endswith("}")
    ]
    return sorted((r for r in records if "image_done" not in r and "sent_id" in r), key=lambda r: r["sent_id"])


def _images(path: Path) -> list[int]:
    return [json.loads(line)["image_done"] for line in path.read_text().splitlines() if "image_done" in line]


def test_two_gloo_processes_resume_and_report_what_one_process_does(
    tmp_path, tiny_config_paths, tiny_checkpoints, monkeypatch, capsys, no_torchrun
):
    refer = build_refer(tmp_path / "dataset")
    cache = tmp_path / "cache"
    args = [
        "evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
        "--images", refer.images_dir, "--proposals", "gt", "--cache", cache,
        "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"],
    ]
    single = tmp_path / "single"
    _cli(monkeypatch, capsys, *args, "--out", single)
    expected = json.loads((single / REPORT_JSON).read_text())

    # What an interrupted run leaves: a single-process session that finished image 11 and was cut in the
    # middle of image 12, and a rank-1 file with a torn first line. Images 12 and 13 leave the cache, so
    # that both processes compute features and write the cache at the same time.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(single / CONFIG_FILE, resumed / CONFIG_FILE)
    lines = (single / RECORDS_FILE).read_text().splitlines(keepends=True)
    first_image = "".join(lines[: next(i for i, line in enumerate(lines) if "image_done" in line) + 1])
    (resumed / RECORDS_FILE).write_text(first_image + '{"image_id": 12, "ref_')
    (resumed / "records.rank1.jsonl").write_text('{"image_id": 12, "ref_id": 3')
    removed = sorted(path.name for path in cache.glob("visual-*/1[23]-*.npz"))
    for path in cache.glob("visual-*/1[23]-*.npz"):
        path.unlink()

    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "globallocal", *map(str, args), "--out", str(resumed)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
            timeout=240,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.count("Evaluation") == 1  # only rank 0 prints the table

    report = json.loads((resumed / REPORT_JSON).read_text())
    assert report["metrics"] == expected["metrics"]
    assert report["processes"] == 2
    # Image 11 was not redone; rank 0 (images 11 and 13) did 13, rank 1 (image 12) cut its torn line and did 12.
    assert (resumed / RECORDS_FILE).read_text() == first_image + '{"image_id": 12, "ref_'
    assert _images(resumed / "records.rank0.jsonl") == [13]
    assert _images(resumed / "records.rank1.jsonl") == [12]
    assert _sentences(resumed) == _sentences(single)
    assert sorted(path.name for path in cache.glob("visual-*/1[23]-*.npz")) == removed

    # The sweep reads every process's records.
    assert run_sweep(resumed)["run"]["metrics"] == expected["metrics"]
