"""--help at 80 columns: grouped by subject, nothing cut, no '<bool>' types, defaults shown once and right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["segment", "proposals", "evaluate", "batch", "sweep", "report", "serve"]


def _help(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "globallocal", *args, "--help"], capture_output=True, text=True,
                          cwd=REPO, env={"COLUMNS": "80", "PATH": "", "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_fits_80_columns_whole(command):
    text = _help(*([command] if command else []))
    assert "…" not in text and "<bool>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_segment_groups_its_options_by_subject():
    text = _help("segment")
    panels = [line.split("─ ")[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert panels == ["Arguments", "Options", "Outputs", "Mask proposals", "Method and models", "VLM", "TCL"]
    assert "--vlm-backend" in text and "--vlm-prompts" in text
    assert "--no-require-noun" not in text and "a single PNG mask" in text
    # The renamed TCL options are listed; the old spellings still work but are not shown.
    assert "--tcl-blend" in text and "--tcl-checkpoint" in text and "--tcl-weight " not in text


def test_proposals_states_its_default_once():
    text = _help("proposals")
    assert "[default: freesolo]" not in text and "the default)" in text
