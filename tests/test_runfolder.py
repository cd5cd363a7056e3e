"""Run folders: one run at a time, records that survive kills, no links followed, no orphans left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from globallocal.errors import InputError
from globallocal.runs.runfolder import LOCK_FILE, RECORDS_FILE, RunFolder, UnitLayout, check_free, read_completed

REPO = Path(__file__).resolve().parents[1]
# A batch-like layout: string keys, records grouped by image path.
LINES = UnitLayout(marker="image_done", member="image", count="lines")


def _fill(folder: RunFolder, keys: list[str]) -> None:
    for key in keys:
        folder.append([{"image": key, "line": n} for n in range(2)], {"image_done": key})


def test_units_are_appended_and_read_back(tmp_path):
    with RunFolder(tmp_path / "run", LINES) as folder:
        folder.check_config({"a": 1})
        assert folder.open_records() == []
        _fill(folder, ["x.jpg", "y.jpg"])
        units = folder.read_completed()
    assert [unit.marker for unit in units] == [{"image_done": "x.jpg", "lines": 2}, {"image_done": "y.jpg", "lines": 2}]
    assert units[1].records == [{"image": "y.jpg", "line": 0}, {"image": "y.jpg", "line": 1}]
    with RunFolder(tmp_path / "run", LINES) as folder, pytest.raises(ValueError, match="must carry image"):
        folder.open_records()
        folder.append([{"image": "other.jpg"}], {"image_done": "z.jpg"})


def test_reopening_cuts_back_to_the_last_marker(tmp_path):
    with RunFolder(tmp_path, LINES) as folder:
        folder.open_records()
        _fill(folder, ["x.jpg"])
    path = tmp_path / RECORDS_FILE
    complete = path.read_bytes()
    path.write_bytes(complete + b'{"image": "y.jpg", "line": 0}\n{"image": "y.j')  # killed mid-unit
    with RunFolder(tmp_path, LINES) as folder:
        assert [unit.marker["image_done"] for unit in folder.open_records()] == ["x.jpg"]
        assert path.read_bytes() == complete
        _fill(folder, ["y.jpg"])
    assert [unit.marker["image_done"] for unit in read_completed(tmp_path, LINES)] == ["x.jpg", "y.jpg"]


def test_a_damaged_line_before_a_marker_is_refused(tmp_path):
    (tmp_path / RECORDS_FILE).write_bytes(b'{"image": "x.jpg"}\nnot json\n{"image_done": "x.jpg", "lines": 2}\n')
    with RunFolder(tmp_path, LINES) as folder, pytest.raises(InputError, match="damaged before line 3"):
        folder.open_records()


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    with RunFolder(tmp_path / "run", LINES):
        started = time.time()
        with pytest.raises(InputError) as refused:
            RunFolder(tmp_path / "run", LINES)
        with pytest.raises(InputError, match="in use by another run"):
            check_free(tmp_path / "run")
    message = str(refused.value)
    assert time.time() - started < 1
    assert f"pid {os.getpid()} on {socket.gethostname()}, started 20" in message and "\n" not in message
    RunFolder(tmp_path / "run", LINES).close()  # released on close


def test_each_records_file_is_locked(tmp_path):
    first = RunFolder(tmp_path, LINES, rank=1, world_size=2, main=False)
    first.open_records()
    second = RunFolder(tmp_path, LINES, rank=1, world_size=2, main=False)
    with pytest.raises(InputError, match=r"records\.rank1\.jsonl is in use by another run"):
        second.open_records()
    first.close()


def test_a_killed_run_does_not_block_the_next(tmp_path):
    holder = (
        "import sys, time; from globallocal.runs.runfolder import RunFolder, UnitLayout; "
        "folder = RunFolder(sys.argv[1], UnitLayout('image_done', 'image', 'lines')); folder.open_records(); "
        "print('locked', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"pid {process.pid}"):
            RunFolder(tmp_path, LINES)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == process.pid  # stale content, no lock
    with RunFolder(tmp_path, LINES) as folder:
        folder.open_records()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_symlinked_records_file_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / RECORDS_FILE).symlink_to(target)
    with RunFolder(run, LINES) as folder, pytest.raises(InputError, match="is a symbolic link"):
        folder.open_records()
    assert target.read_text() == "keep me\n"


def test_orphan_temporary_files_are_removed_on_open(tmp_path):
    """A killed run's half-written files, in the folder and in the folders its units write (a driver killed while
    writing a mask); not in another subfolder, which may be a feature cache another run is writing to."""
    (tmp_path / "masks").mkdir()
    (tmp_path / "cache" / "ab").mkdir(parents=True)
    for name in (".report.json.abc123.tmp", ".config.json.x.tmp", "masks/.3.png.mnj4wzh8.tmp",
                 "cache/ab/.12.npz.k2j3.tmp"):
        (tmp_path / name).write_text("half")
    (tmp_path / "notes.tmp").write_text("a user's file")
    (tmp_path / "masks" / "3.png").write_text("a mask")
    RunFolder(tmp_path, UnitLayout(marker="image_done", member="image", count="lines",
                                   output_folders=("masks",))).close()
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file()) == [
        "cache/ab/.12.npz.k2j3.tmp", "masks/3.png", "notes.tmp", LOCK_FILE]


def test_config_is_written_once_then_compared(tmp_path):
    with RunFolder(tmp_path, LINES) as folder:
        folder.check_config({"a": 1, "b": 2})
    with RunFolder(tmp_path, LINES) as folder:
        folder.check_config({"a": 1, "b": 2})
        with pytest.raises(InputError, match=r"different configuration; .* differs in:\n  b: run 2, now 3$"):
            folder.check_config({"a": 1, "b": 3})
        with pytest.raises(InputError, match="holds a run with other clip weights"):
            folder.check_config({"a": 1, "b": 3}, explain=lambda stored, now: "other clip weights")
    with pytest.raises(InputError, match="is a file"):
        RunFolder(tmp_path / "config.json", LINES)


def test_a_refusal_lists_the_differing_leaves_one_per_line_values_shortened(tmp_path):
    stored = {"settings": {"alpha": 0.95, "prompt": "x" * 500, "same": 1}, "cache": None}
    with RunFolder(tmp_path, LINES) as folder:
        folder.check_config(stored)
        with pytest.raises(InputError) as refused:
            folder.check_config({"settings": {"alpha": 0.5, "prompt": "y" * 500, "same": 1},
                                 "cache": {"dir": "/c", "visual": "v" * 300}})
    first, *lines = str(refused.value).split("\n")
    assert first.endswith("holds a run with a different configuration; use another --out or delete that "
                          "directory; it differs in:")
    assert lines[0].startswith('  cache: run null, now {"dir": "/c", "visual": "vvv') and lines[0].endswith('...')
    assert lines[1:] == ["  settings.alpha: run 0.95, now 0.5",
                         f'  settings.prompt: run "{"x" * 56}..., now "{"y" * 56}...']
