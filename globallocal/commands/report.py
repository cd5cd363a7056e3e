"""`globallocal report`: finished evaluation runs side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from ..errors import InputError


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders of finished evaluations."),
    output_format: str = typer.Option(
        "table", "--format", help="table (terminal), markdown, csv (metrics at full precision) or latex."
    ),
) -> None:
    """Print the metrics of finished evaluation runs side by side, with the settings that differ between them."""
    from globallocal.runs.report import FORMATS, format_report_table, format_report_text

    if output_format not in FORMATS:
        raise InputError(f"unknown --format {output_format!r}; use {', '.join(FORMATS)}")
    if output_format == "table":
        Console(highlight=False).print(format_report_table(run_dirs))
    else:
        sys.stdout.write(format_report_text(run_dirs, output_format))
