"""`globallocal sweep`: a cached evaluation run's metrics at other scoring weights, without the models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .common import stderr


def sweep(
    run_dir: Path = typer.Argument(..., help="Folder of a finished evaluation run made with --cache."),
    alpha: str | None = typer.Option(
        None, help="global-local: comma-separated alphas, e.g. 0.8,0.85,0.9,0.95 (default: the run's)."
    ),
    beta: str | None = typer.Option(
        None, help="Comma-separated betas (whole-expression text weight), e.g. 0.3,0.5,0.7 (default: the run's)."
    ),
    relation_weight: str | None = typer.Option(
        None, help="hybridgl: weights of the relation term in the final mix, e.g. 0.3,0.4,0.5 (paper 0.4)."
    ),
    gem_k_big: str | None = typer.Option(None, help="hybridgl: GEM k values, in [0, 2], for the relation "
                                         "flag big (paper 1.95)."),
    gem_k_small: str | None = typer.Option(None, help="hybridgl: GEM k values for the flag small (paper 1.5)."),
    gem_k_other: str | None = typer.Option(
        None, help="hybridgl: GEM k values for every other flag (the spec's 'else', paper 1.8)."
    ),
    out: Path | None = typer.Option(
        None, help="Folder for sweep.json, sweep.md and (global-local) the heat map sweep.png "
        "(default: RUN_DIR/sweep)."
    ),
    cache: Path | None = typer.Option(None, help="The run's feature cache, if it has moved since the run."),
) -> None:
    """Metrics of a cached evaluation run at other scoring weights, from its records and cache, without the models.

    global-local runs: every (alpha, beta). hybridgl runs: every combination of --beta, --relation-weight and the
    --gem-k-* values, for both the guided and the pure answers (a table; no heat map). Weights not given stay at
    the run's.

    Examples (the folders evaluate --cache writes by default): globallocal sweep
    runs/refcoco_val_global-local_paper-refcoco_ViT-B-32_freesolo --alpha 0.8,0.85,0.9,0.95 --beta 0.3,0.5,0.7;
    globallocal sweep runs/refcoco_val_hybridgl_hybridgl-paper_ViT-B-16_sam --beta 0.3,0.5 --relation-weight 0.3,0.4,0.5
    """
    from globallocal.runs.sweepable import check_sweepable

    check_sweepable(run_dir)  # torch-free: a folder that cannot be swept is refused at once
    from globallocal.runs.sweep import format_sweep_table, parse_values, run_sweep

    k_values = {"gem_k_big": gem_k_big, "gem_k_small": gem_k_small, "gem_k_other": gem_k_other}
    axes = {
        "relation_weight": parse_values(relation_weight, "relation-weight"),
        **{name: parse_values(text, name.replace("_", "-"), high=2.0) for name, text in k_values.items()},
    }
    result = run_sweep(
        run_dir, parse_values(alpha, "alpha"), parse_values(beta, "beta"), out_dir=out, cache_dir=cache, axes=axes
    )
    Console(highlight=False).print(format_sweep_table(result))
    files = result["files"]
    pictured = f", heat map {files['sweep.png']}" if "sweep.png" in files else " (no heat map for a HybridGL grid)"
    stderr.print(f"sweep ({result['seconds']:.1f} s): {files['sweep.md']}{pictured}")
