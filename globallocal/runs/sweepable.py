"""Whether a run folder can be swept, known from its files alone: ``sweep`` answers at once, torch-free.

A sweep replays a finished run's answers from its feature cache, so the run
must be finished, made with ``--cache``, and by a method whose registry
entry names a sweep (:attr:`~globallocal.methods.MethodSpec.sweep_module`),
not blended with TCL. The method is checked before the cache: evaluating a
TCL or SAM 3 run again with ``--cache`` would lead nowhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..methods import DEFAULT_METHOD, MethodSpec, available_methods, get_method
from .benchmark_metrics import REFERRING, family_of
from .evaluation_report import REPORT_JSON
from .runfolder import CONFIG_FILE, read_config

__all__ = ["check_sweepable", "sweepable_methods"]


def sweepable_methods() -> dict[str, MethodSpec]:
    """The methods whose runs can be swept, by name."""
    specs = {name: get_method(name) for name in available_methods()}
    return {name: spec for name, spec in specs.items() if spec.sweep_module}


def check_sweepable(run_dir: str | Path) -> dict[str, Any]:
    """The run's configuration, refused with the fix unless the run can be swept (its cache is looked for later)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"no evaluation run in {run_dir}: no such folder; give the --out folder of a finished "
                         "`globallocal evaluate --cache DIR` run")
    if not (run_dir / CONFIG_FILE).exists():
        raise InputError(f"no evaluation run in {run_dir}: {run_dir / CONFIG_FILE} is missing")
    if not (run_dir / REPORT_JSON).exists():
        raise InputError(f"no finished run in {run_dir}: {REPORT_JSON} is missing; run the evaluation to the end first")
    config = read_config(run_dir)
    if family_of(str(config.get("dataset"))) is not REFERRING:
        raise InputError(f"{run_dir} is a {config['dataset']} run: sweeps replay oIoU, mIoU and precision, not "
                         f"{config['dataset']}'s own metrics; evaluate again at the other weights instead")
    settings = config.get("settings") if isinstance(config.get("settings"), dict) else {}
    method = settings.get("method", DEFAULT_METHOD)
    specs = sweepable_methods()
    sweeps = " and ".join(specs)
    if "tcl_weight" in settings:
        raise InputError(f"{run_dir} blends {method} with TCL (--tcl-blend); its scores cannot be replayed from the "
                         f"cache, so it cannot be swept (sweeps are for {sweeps} runs without --tcl-blend)")
    if method not in specs:
        raise InputError(f"{run_dir} was evaluated with method {method}, whose runs cannot be swept; sweeps are for "
                         f"{sweeps} runs made with --cache")
    if not config.get("cache"):
        # Its images' features were not kept, and the cache is part of a run's identity: a new folder is needed.
        raise InputError(f"{run_dir} was evaluated without --cache, so its features were not kept; evaluate again "
                         f"with --cache DIR --out {run_dir}_cached (the same options otherwise), then sweep that "
                         "folder")
    return config
