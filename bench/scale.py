"""`batch` on one process against `batch --ray local` with 1, 2, ... actors, and the cost Ray adds per photo.

    python bench/scale.py [--photos 12] [--masks 12] [--actors 1,2] [--clip-model CFG --clip-weights FILE]

Each run is the real command in its own process on the same manifest (photos
with their own mask proposals, so no proposal model is needed): its wall
time, the photos per second once the first photo is recorded (start-up
apart: Ray, the actors and their models), and the CPU time of the process
and every process under it (Ray's included) over the wall time (cores busy;
sampled, so a process shorter than a sample is missed). The masks of every run
are checked to be the bytes of the single-process run's (its scores may
differ in the last digits: one process uses every core's thread, an actor
as many threads as its CPUs, and float sums depend on that). Without
``--clip-model`` a small random ViT stands in for CLIP (weights cannot be
downloaded everywhere); on a GPU node pass real weights and
``--actors 1,2,4,8`` to see the scaling to every GPU.

The per-photo overhead is measured apart, with a step that does nothing:
the time per unit through the actor pool (serialising the unit and its
result, scheduling, the driver's bookkeeping) against a loop in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A small ViT at CLIP's input size: real code paths, a per-photo cost of tens of milliseconds on a CPU.
SMALL_VIT = {
    "embed_dim": 128, "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 256, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}
PHRASES = ("the man on the right", "a wooden chair", "the dog near the table")


def make_inputs(folder: Path, photos: int, masks: int) -> Path:
    """``photos`` 480x640 photos, ``masks`` box proposals each, three phrases a photo: the manifest."""
    import numpy as np
    from PIL import Image

    sources = [REPO / "examples" / "img_80472.jpg", REPO / "examples" / "img_44266.jpg"]
    rng = np.random.default_rng(0)
    lines = []
    for number in range(photos):
        photo = Image.open(sources[number % 2]).convert("RGB").resize((640, 480)).rotate(180 * (number // 2 % 2))
        photo.save(folder / f"photo{number}.jpg")
        (folder / f"masks{number}").mkdir()
        for i in range(masks):
            y, x = rng.integers(0, 360), rng.integers(0, 480)
            mask = np.zeros((480, 640), np.uint8)
            mask[y: y + 120, x: x + 160] = 255
            Image.fromarray(mask).save(folder / f"masks{number}" / f"{i:03d}.png")
        lines.append({"image": f"photo{number}.jpg", "phrases": list(PHRASES), "masks": f"masks{number}"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "pairs.jsonl"


def small_clip(folder: Path) -> tuple[str, str]:
    import open_clip
    import torch

    config = folder / "small-vit.json"
    config.write_text(json.dumps(SMALL_VIT))
    torch.manual_seed(0)
    torch.save(open_clip.model.CLIP(**SMALL_VIT).state_dict(), folder / "small-vit.pt")
    return str(config), str(folder / "small-vit.pt")


def _masks(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "masks").iterdir())}


def _descendants_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) of ``root`` and every process under it (Ray's workers included)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    for pid in tree & times.keys():
        seen[pid] = max(seen.get(pid, 0.0), times[pid])


def timed_run(args: list[str], out: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``globallocal batch`` in a process; wall time, photos/s after the first photo, cores busy."""
    records = out / "records.jsonl"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "globallocal", "batch", *args, "-o", str(out)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    marks: list[float] = []  # when each photo's marker appeared
    cpu: dict[int, float] = {}  # CPU seconds by process, sampled (a process's last sample before it ends)
    while process.poll() is None:
        if records.exists():
            count = records.read_bytes().count(b'"unit_done"')
            marks += [time.perf_counter()] * (count - len(marks))
        _descendants_cpu(process.pid, cpu)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"batch failed: {process.stderr.read()}")
    count = records.read_bytes().count(b'"unit_done"')
    marks += [time.perf_counter()] * (count - len(marks))
    steady = (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 and marks[-1] > marks[0] else float("nan")
    return {"wall": wall, "first": marks[0] - started, "rate": steady, "cores": sum(cpu.values()) / wall}


class _NoOpStep:
    """A step that does nothing: what is left of a unit's time is Ray's and the driver's."""

    def __call__(self, unit):
        from globallocal.runs.runfolder import UnitResult

        return UnitResult(unit, [], {"unit_done": unit})


def _no_op(device: str) -> _NoOpStep:
    return _NoOpStep()


def overhead_ms(units: int) -> tuple[float, float]:
    """(ms per unit in one process, ms per unit through one Ray actor), start-up apart."""
    from globallocal.runs.ray_engine import RayOptions, RayRun

    step = _NoOpStep()
    started = time.perf_counter()
    for unit in range(units):
        step(unit)
    local = (time.perf_counter() - started) * 1000 / units
    with RayRun(RayOptions("local", actors=1), say=lambda line: None) as run:
        stamps = [time.perf_counter() for _ in run.results(_no_op, [(unit, unit) for unit in range(units)])]
    return local, (stamps[-1] - stamps[0]) * 1000 / (units - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--masks", type=int, default=12)
    parser.add_argument("--actors", default="1,2", help="Comma-separated actor counts for --ray local.")
    parser.add_argument("--clip-model", help="open_clip name or config (default: a small random ViT).")
    parser.add_argument("--clip-weights", help="Its weights (with --clip-model).")
    parser.add_argument("--overhead-units", type=int, default=200)
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="globallocal-scale-") as tmp:
        folder = Path(tmp)
        manifest = make_inputs(folder, options.photos, options.masks)
        model, weights = (options.clip_model, options.clip_weights) if options.clip_model else small_clip(folder)
        common = [str(manifest), "--clip-model", model, "--clip-weights", weights]
        rows = [("one process", timed_run(common, folder / "single")),
                ("one process, 1 thread", timed_run(common, folder / "single1", {"OMP_NUM_THREADS": "1"}))]
        reference = _masks(folder / "single")
        for actors in (int(n) for n in options.actors.split(",")):
            out = folder / f"ray{actors}"
            rows.append((f"--ray local, {actors} actor{'s' if actors > 1 else ''}",
                         timed_run([*common, "--ray", "local", "--ray-actors", str(actors)], out)))
            if _masks(out) != reference:
                raise SystemExit(f"{out}: masks differ from the single-process run's")
        local, through_ray = overhead_ms(options.overhead_units)
    load = os.getloadavg()
    print(f"{options.photos} photos x {len(PHRASES)} phrases x {options.masks} masks, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min); masks identical\n")
    print("| run | wall s | first photo s | photos/s after it | cores busy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in rows:
        print(f"| {name} | {row['wall']:.1f} | {row['first']:.1f} | {row['rate']:.2f} | {row['cores']:.2f} |")
    print(f"\nper-unit overhead (a step that does nothing, {options.overhead_units} units): "
          f"{local:.3f} ms in one process, {through_ray:.1f} ms through one Ray actor")


if __name__ == "__main__":
    main()
