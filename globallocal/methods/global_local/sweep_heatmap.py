"""The heat map of a global-local alpha x beta sweep (sweep.png)."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image, ImageDraw

from ...data.fonts import fonts


def grid_value(result: dict[str, Any], alpha: float, beta: float, metric: str) -> float:
    """A metric of the sweep at (alpha, beta)."""
    item = next(r for r in result["results"] if r["alpha"] == alpha and r["beta"] == beta)
    return item["metrics"][metric]


def is_run_point(result: dict[str, Any], alpha: float, beta: float) -> bool:
    """Whether (alpha, beta) is the run's own setting."""
    return (alpha, beta) == (result["run"]["alpha"], result["run"]["beta"])


# Viridis at eight evenly spaced points: readable in grey and for colour-blind eyes.
_VIRIDIS = (
    (68, 1, 84), (70, 50, 127), (54, 92, 141), (39, 127, 142),
    (31, 161, 135), (74, 194, 109), (159, 218, 58), (253, 231, 37),
)


def _colour(fraction: float) -> tuple[int, int, int]:
    position = min(max(fraction, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = min(int(position), len(_VIRIDIS) - 2)
    t = position - low
    return tuple(round(a + (b - a) * t) for a, b in zip(_VIRIDIS[low], _VIRIDIS[low + 1]))


def draw_heatmap(result: dict[str, Any]) -> Image.Image:
    """oIoU and mIoU over the alpha x beta grid, side by side, values in the cells.

    Each panel's colours span its own minimum to maximum. The run's own
    setting is outlined in red; the best cell of each panel says "best".
    """
    alphas, betas = result["alphas"], result["betas"]
    title_font, label_font, value_font, note_font = (fonts(size).primary for size in (22, 17, 19, 13))
    cell_w, cell_h, label_w, header_h, gap, margin = 92, 56, 120, 34, 40, 24
    run = result["run"]
    title = f"alpha x beta sweep: {result['dataset']}"
    in_grid = run["alpha"] in alphas and run["beta"] in betas
    footnote = (
        f"{'red outline: ' if in_grid else 'not in the grid: '}the run's own setting (alpha {run['alpha']:g}, "
        f"beta {run['beta']:g}); {run['sentences_checked'] - run['sentences_differing']} of "
        f"{run['sentences_checked']} of its picks reproduced"
    )
    panel_w = label_w + cell_w * len(betas)
    # Wide enough for the title and the footnote however small the grid.
    text_w = max(title_font.getlength(title), label_font.getlength(footnote))
    width = 2 * margin + max(2 * panel_w + gap, math.ceil(text_w))
    left = (width - 2 * panel_w - gap) // 2
    top = margin + 40
    height = top + 36 + header_h + cell_h * len(alphas) + 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, margin), title, font=title_font, fill="black", anchor="mt")
    for panel, metric in enumerate(("oIoU", "mIoU")):
        x0 = left + panel * (panel_w + gap)
        draw.text((x0 + panel_w // 2, top), f"{metric} (%)", font=title_font, fill="black", anchor="mt")
        grid_top = top + 36 + header_h
        draw.text((x0 + label_w // 2, grid_top - header_h // 2), "alpha \\ beta", font=label_font,
                  fill="black", anchor="mm")
        for j, beta in enumerate(betas):
            draw.text((x0 + label_w + j * cell_w + cell_w // 2, grid_top - header_h // 2), f"{beta:g}",
                      font=label_font, fill="black", anchor="mm")
        values = [[grid_value(result, alpha, beta, metric) for beta in betas] for alpha in alphas]
        low, high = min(map(min, values)), max(map(max, values))
        best = result["best"][metric]
        for i, alpha in enumerate(alphas):
            y = grid_top + i * cell_h
            draw.text((x0 + label_w // 2, y + cell_h // 2), f"{alpha:g}", font=label_font, fill="black",
                      anchor="mm")
            for j, beta in enumerate(betas):
                x = x0 + label_w + j * cell_w
                value = values[i][j]
                colour = _colour((value - low) / (high - low) if high > low else 0.5)
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=colour, outline="white")
                luminance = (0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]) / 255
                ink = "black" if luminance > 0.45 else "white"
                is_best = (alpha, beta) == (best["alpha"], best["beta"])
                centre_y = y + cell_h // 2 - (7 if is_best else 0)
                draw.text((x + cell_w // 2, centre_y), f"{value:.2f}", font=value_font, fill=ink, anchor="mm")
                if is_best:
                    draw.text((x + cell_w // 2, y + cell_h - 9), "best", font=note_font, fill=ink, anchor="mb")
                if is_run_point(result, alpha, beta):
                    draw.rectangle((x + 1, y + 1, x + cell_w - 2, y + cell_h - 2), outline=(230, 30, 30), width=4)
    draw.text((margin, height - 16), footnote, font=label_font, fill="black", anchor="ls")
    return image
